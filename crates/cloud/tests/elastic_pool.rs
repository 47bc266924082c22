//! Buckets moving between workers while batches arrive and flags are decided: the sums the
//! workers hand back equal sums taken directly over the committed batches.

use mcloud_cloud::elastic::{ElasticConfig, InProcess, Pool};
use mcloud_core::reading::{GroupKey, Metric};
use mcloud_core::share::record_values;
use mcloud_core::wire::{ShareRecord, UploadBatch};
use mcloud_core::{BatchId, Partial, Window};
use std::collections::HashMap;
use std::sync::Arc;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn batch(rng: &mut Lcg, id: u128, key: &mut u64) -> UploadBatch {
    let records = (0..200)
        .map(|_| {
            *key += 1;
            ShareRecord {
                key: *key,
                ts: 1000 + rng.next() % 600,
                metric: if rng.next() % 2 == 0 {
                    Metric::Load
                } else {
                    Metric::Work
                },
                group: GroupKey {
                    house: (rng.next() % 5) as u32,
                    household: (rng.next() % 3) as u32,
                    plug: (rng.next() % 7) as u32,
                },
                share: record_values(rng.next() % 1_000_000),
            }
        })
        .collect();
    UploadBatch::single_party(BatchId(id), records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_and_scaling_keep_sums_exact() {
    let config = ElasticConfig {
        buckets: 64,
        workers: 2,
        period: None,
        ..ElasticConfig::default()
    };
    let pool = Pool::start(config, 60, Arc::new(InProcess::default())).expect("pool");
    let mut rng = Lcg(7);
    let mut key = 0;
    let mut expected: HashMap<(u64, Metric, GroupKey), Partial> = HashMap::new();
    let mut undecided: Vec<(BatchId, bool)> = Vec::new();
    // Buckets move and workers come and go concurrently with routing and decisions, so
    // flags are also decided while bucket state is in transit.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = Lcg(99);
            let mut migrations = 0;
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || round < 40 {
                round += 1;
                if round % 4 == 0 {
                    let n = 1 + (rng.next() % 5) as usize;
                    pool.scale_to(n).await.expect("scale");
                } else {
                    let workers = pool.workers() as u64 + 4;
                    let moves = (0..8)
                        .map(|_| ((rng.next() % 64) as usize, (rng.next() % workers) as u32))
                        .collect();
                    migrations += pool.migrate(moves).await.expect("migrate");
                }
                tokio::task::yield_now().await;
            }
            migrations
        })
    };
    for i in 0..600u128 {
        let b = batch(&mut rng, i + 1, &mut key);
        let committed = rng.next() % 5 != 0;
        if committed {
            for r in &b.records {
                let start = Window::containing(r.ts, 60).start;
                expected
                    .entry((start, r.metric, r.group))
                    .or_default()
                    .add_shares(&r.share);
            }
        }
        undecided.push((b.batch_id, committed));
        pool.dispatch(Arc::new(b));
        // Flags are decided out of order, some long after the batch arrived.
        while undecided.len() > 8 || (!undecided.is_empty() && rng.next() % 3 == 0) {
            let at = (rng.next() as usize) % undecided.len();
            let (id, c) = undecided.swap_remove(at);
            pool.decide(id, c);
        }
        if i % 4 == 0 {
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let migrations = churn.await.expect("churn");
    for (id, c) in undecided.drain(..) {
        pool.decide(id, c);
    }
    let windows: Vec<u64> = (0..40).map(|w| w * 60).collect();
    let got = pool.take(windows).await.expect("every worker answers");
    let mut flat: HashMap<(u64, Metric, GroupKey), Partial> = HashMap::new();
    for (start, w) in got {
        for ((metric, group), p) in w.groups {
            flat.insert((start, metric, group), p);
        }
    }
    assert_eq!(flat.len(), expected.len());
    for (cell, p) in &expected {
        assert_eq!(flat.get(cell), Some(p), "cell {cell:?}");
    }
    let counters = pool.counters();
    assert!(migrations > 20, "only {migrations} migrations");
    assert!(counters.scale_out_steps + counters.scale_in_steps >= 10);
}
