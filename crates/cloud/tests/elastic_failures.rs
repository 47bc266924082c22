//! Worker failures at the edges of a handover and of a checkpoint, each set up
//! deterministically: the sums the workers hand back after the failed worker's buckets are
//! rebuilt equal the committed input.

use mcloud_cloud::elastic::{
    bucket_of, BucketState, ElasticConfig, InProcess, Pool, ReplaySource, WorkerId,
};
use mcloud_cloud::CloudError;
use mcloud_core::reading::{GroupKey, Metric};
use mcloud_core::share::record_values;
use mcloud_core::wire::{ShareRecord, UploadBatch};
use mcloud_core::{BatchId, Partial};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BUCKETS: usize = 8;
const WINDOW: u64 = 60;

/// The node's side of a replay: the stored batches and their final flags.
#[derive(Default)]
struct Stored {
    batches: Mutex<HashMap<BatchId, UploadBatch>>,
    outcomes: Mutex<HashMap<BatchId, bool>>,
    /// Reads fail, as a values table on a failing disk would.
    failing: AtomicBool,
    /// The latest checkpoint's bucket states.
    checkpoint: Mutex<HashMap<usize, BucketState>>,
    /// Every batch a replay read.
    replayed: Mutex<Vec<BatchId>>,
}

impl ReplaySource for Stored {
    fn batches(&self, ids: &[BatchId]) -> Result<Vec<UploadBatch>, CloudError> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(CloudError::Storage("read failed".into()));
        }
        self.replayed.lock().unwrap().extend_from_slice(ids);
        let stored = self.batches.lock().unwrap();
        Ok(ids
            .iter()
            .filter_map(|id| stored.get(id).cloned())
            .collect())
    }

    fn outcome(&self, id: &BatchId) -> Option<bool> {
        self.outcomes.lock().unwrap().get(id).copied()
    }

    fn sealed(&self) -> Vec<u64> {
        Vec::new()
    }

    fn checkpointed(&self, buckets: &[usize]) -> Result<Vec<(usize, BucketState)>, CloudError> {
        let checkpoint = self.checkpoint.lock().unwrap();
        Ok(buckets
            .iter()
            .filter_map(|b| checkpoint.get(b).map(|s| (*b, s.clone())))
            .collect())
    }
}

/// A key of every bucket, so each bucket holds a group.
fn keys() -> Vec<GroupKey> {
    let mut by_bucket: Vec<Option<GroupKey>> = vec![None; BUCKETS];
    for plug in 0..1000 {
        let key = GroupKey {
            house: 0,
            household: 0,
            plug,
        };
        by_bucket[bucket_of(&key, BUCKETS)].get_or_insert(key);
    }
    by_bucket
        .into_iter()
        .map(|k| k.expect("a key in every bucket"))
        .collect()
}

struct Harness {
    pool: Arc<Pool>,
    stored: Stored,
    expected: HashMap<(Metric, GroupKey), Partial>,
    /// Routed batches whose flag is not final yet, with what they add when committed.
    undecided: HashMap<BatchId, Vec<ShareRecord>>,
    next_id: u128,
}

impl Harness {
    fn new(workers: usize) -> Harness {
        let config = ElasticConfig {
            buckets: BUCKETS,
            workers,
            period: None,
            ..ElasticConfig::default()
        };
        Harness {
            pool: Pool::start(config, WINDOW, Arc::new(InProcess::default())).expect("pool"),
            stored: Stored::default(),
            expected: HashMap::new(),
            undecided: HashMap::new(),
            next_id: 1,
        }
    }

    /// Stores, routes and commits a batch with one record in every bucket.
    fn commit_batch(&mut self) {
        let id = self.route_batch();
        self.decide(id, true);
    }

    /// Stores and routes a batch with one record in every bucket; its flag stays open.
    fn route_batch(&mut self) -> BatchId {
        let id = BatchId(self.next_id);
        self.next_id += 1;
        let records: Vec<ShareRecord> = keys()
            .into_iter()
            .enumerate()
            .map(|(i, group)| ShareRecord {
                key: (id.0 as u64) * 1000 + i as u64,
                ts: 10,
                metric: Metric::Work,
                group,
                share: record_values(id.0 as u64 * 10 + i as u64),
            })
            .collect();
        self.undecided.insert(id, records.clone());
        let batch = UploadBatch {
            batch_id: id,
            party: 0,
            parties: 1,
            records,
            histograms: Vec::new(),
        };
        self.stored
            .batches
            .lock()
            .unwrap()
            .insert(id, batch.clone());
        self.pool.dispatch(Arc::new(batch));
        id
    }

    fn decide(&mut self, id: BatchId, committed: bool) {
        let records = self.undecided.remove(&id).expect("an undecided batch");
        if committed {
            for r in &records {
                self.expected
                    .entry((r.metric, r.group))
                    .or_default()
                    .add_shares(&r.share);
            }
        }
        self.stored.outcomes.lock().unwrap().insert(id, committed);
        self.pool.decide(id, committed);
    }

    /// Takes a checkpoint into `stored`; returns the batches it covered.
    async fn checkpoint(&self) -> Option<Vec<BatchId>> {
        let mut covered = None;
        let info = self
            .pool
            .checkpoint(|cp| {
                *self.stored.checkpoint.lock().unwrap() = cp.states.into_iter().collect();
                covered = Some(cp.covered);
                async { Ok(()) }
            })
            .await
            .expect("checkpoint");
        assert_eq!(info.is_some(), covered.is_some());
        covered
    }

    async fn crash(&self, worker: WorkerId) {
        assert!(
            self.pool.crash_worker(worker),
            "worker {worker} is not running"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pool.dead_workers().contains(&worker) {
            assert!(Instant::now() < deadline, "worker {worker} did not stop");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn crash_and_recover(&self, worker: WorkerId) {
        self.crash(worker).await;
        self.pool.recover(&self.stored).await.expect("recover");
    }

    async fn assert_exact(&self) {
        let mut got = self.pool.take(vec![0]).await.expect("every worker answers");
        let window = got.remove(&0).unwrap_or_default();
        for (group, p) in &self.expected {
            assert_eq!(
                window.groups.get(group),
                Some(p),
                "group {group:?} (bucket {})",
                bucket_of(&group.1, BUCKETS)
            );
        }
        assert_eq!(window.groups.len(), self.expected.len());
    }
}

/// A bucket named twice in one migration (moved to a worker and on, or back, within the same
/// cut) must end with its whole state at its final owner: a copy left at the intermediate
/// worker would die with that worker, and recovery only rebuilds the buckets a dead worker
/// owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_moved_twice_in_one_cut_survives_the_intermediate_workers_death() {
    let mut h = Harness::new(3);
    h.commit_batch();
    h.commit_batch();
    // Bucket 0 starts at worker 0: over to worker 1 and back within one cut, bucket 3 (at
    // worker 0) over to 1 and on to 2.
    let moved = h
        .pool
        .migrate(vec![(0, 1), (0, 0), (3, 1), (3, 2)])
        .await
        .expect("migrate");
    h.commit_batch();
    h.crash_and_recover(1).await;
    h.assert_exact().await;
    assert_eq!(moved, 1, "bucket 0 stays put, bucket 3 moves once");
}

/// A bucket whose state died with its old owner in transit, and whose old owner then left the
/// map, is not in any live worker until recovery rebuilds it: a take in between must not
/// gather the window without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_take_while_a_stranded_bucket_awaits_recovery() {
    let mut h = Harness::new(2);
    h.commit_batch();
    h.crash(1).await;
    // Scaling in removes the dead worker; its buckets cannot be handed over.
    h.pool.scale_to(1).await.expect("scale in");
    assert!(h.pool.needs_recovery());
    assert!(
        h.pool.take(vec![0]).await.is_none(),
        "a take gathered the window while buckets were missing"
    );
    h.pool.recover(&h.stored).await.expect("recover");
    h.assert_exact().await;
}

/// A rebuild that fails after the new map is out (the replay could not read the values
/// table) has dropped the dead worker from the map: its buckets must still be rebuilt by the
/// next recovery, and no take may gather a window before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rebuild_is_redone_in_full() {
    let mut h = Harness::new(2);
    h.commit_batch();
    h.commit_batch();
    h.crash(1).await;
    h.stored.failing.store(true, Ordering::Relaxed);
    assert!(h.pool.recover(&h.stored).await.is_err());
    assert!(h.pool.needs_recovery());
    assert!(h.pool.take(vec![0]).await.is_none());
    h.stored.failing.store(false, Ordering::Relaxed);
    h.pool.recover(&h.stored).await.expect("recover");
    assert!(!h.pool.needs_recovery());
    h.commit_batch();
    h.assert_exact().await;
}

/// A rebuild starts from the latest checkpoint and replays only the batches routed after it,
/// including a batch whose flag was open at the checkpoint and one that ended ERROR after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_replays_only_what_the_checkpoint_lacks() {
    let mut h = Harness::new(3);
    for _ in 0..4 {
        h.commit_batch();
    }
    let open_at_checkpoint = h.route_batch();
    let failing = h.route_batch();
    let before: Vec<BatchId> = (1..=6).map(BatchId).collect();
    assert_eq!(h.checkpoint().await, Some(before));
    assert_eq!(h.pool.uncheckpointed(), 0);
    h.decide(open_at_checkpoint, true);
    h.decide(failing, false);
    h.commit_batch();
    let late = h.route_batch();
    h.pool
        .migrate(vec![(0, 1), (1, 2), (2, 0)])
        .await
        .expect("migrate");
    h.commit_batch();
    h.crash_and_recover(1).await;
    h.decide(late, true);
    h.assert_exact().await;
    let mut replayed = h.stored.replayed.lock().unwrap().clone();
    replayed.sort();
    assert_eq!(replayed, vec![BatchId(7), BatchId(8), BatchId(9)]);
}

/// No checkpoint is taken while a dead worker's buckets await their rebuild (it would lack
/// them); the rebuild then uses the previous checkpoint and the whole log after it, and the
/// next checkpoint covers everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_checkpoint_while_buckets_await_recovery() {
    let mut h = Harness::new(2);
    h.commit_batch();
    assert!(h.checkpoint().await.is_some());
    h.commit_batch();
    h.crash(0).await;
    assert_eq!(h.checkpoint().await, None);
    h.commit_batch();
    h.pool.recover(&h.stored).await.expect("recover");
    h.assert_exact().await;
    assert_eq!(h.checkpoint().await, Some(vec![BatchId(2), BatchId(3)]));
    h.crash_and_recover(1).await;
    h.assert_exact().await;
}

/// What reaches a window after the node gathered it (here, a flag decided afterwards; in a
/// run, a bucket handed over across the gathering or a replay) was counted already or belongs
/// to nothing: the workers drop it instead of keeping it for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_kept_for_a_gathered_window() {
    let mut h = Harness::new(2);
    let late = h.route_batch();
    let taken = h.pool.take(vec![0]).await.expect("every worker answers");
    assert!(taken.get(&0).is_none_or(|w| w.groups.is_empty()));
    h.pool.forget(vec![0]);
    h.decide(late, true);
    h.pool.migrate(vec![(0, 1), (1, 0)]).await.expect("migrate");
    let again = h.pool.take(vec![0]).await.expect("every worker answers");
    assert!(
        again.get(&0).is_none_or(|w| w.groups.is_empty()),
        "a gathered window came back with {} groups",
        again[&0].groups.len()
    );
}
