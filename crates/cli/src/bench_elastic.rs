//! `mcloud bench --elastic`: the elastic workers measured on their own, without TLS or
//! storage in the way: aggregation throughput with one and with two workers, the pause of a
//! bucket handover, how long a load step takes to be served by new workers, and (with the
//! values table's storage) how long a durable checkpoint of the handover bucket's state takes.

use anyhow::{Context, Result};
use mcloud_cloud::elastic::{
    bucket_of, percentile, ElasticConfig, InProcess, Pool, Thresholds, WorkerId,
};
use mcloud_cloud::store::Store;
use mcloud_core::reading::{GroupKey, Metric};
use mcloud_core::share::record_values;
use mcloud_core::wire::{ShareRecord, UploadBatch};
use mcloud_core::BatchId;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUCKETS: usize = 1024;
const WINDOW: u64 = 60;

fn config(workers: usize, period: Option<Duration>) -> ElasticConfig {
    ElasticConfig {
        buckets: BUCKETS,
        workers,
        period,
        thresholds: Thresholds {
            max_workers: 8,
            cooldown: Duration::from_secs(2),
            ..Thresholds::default()
        },
        ..ElasticConfig::default()
    }
}

/// A batch of `n` records over `plugs` plugs, spread over a few windows.
fn batch(id: u128, n: usize, plugs: &[GroupKey], key: &mut u64) -> UploadBatch {
    let records = (0..n)
        .map(|i| {
            *key += 1;
            ShareRecord {
                key: *key,
                ts: (*key / 4096) % 5 * WINDOW + 1,
                metric: if i % 2 == 0 {
                    Metric::Load
                } else {
                    Metric::Work
                },
                group: plugs[(*key as usize) % plugs.len()],
                share: record_values(*key % 100_000),
            }
        })
        .collect();
    UploadBatch::single_party(BatchId(id), records)
}

fn plugs(n: u32) -> Vec<GroupKey> {
    (0..n)
        .map(|i| GroupKey {
            house: i / 20,
            household: (i / 5) % 4,
            plug: i % 5,
        })
        .collect()
}

/// Records per second `workers` workers aggregate (routing, summing, deciding, gathering).
async fn throughput(workers: usize) -> Result<f64> {
    let pool = Pool::start(
        config(workers, None),
        WINDOW,
        Arc::new(InProcess::default()),
    )?;
    let plugs = plugs(2000);
    let mut key = 0;
    let batches: Vec<Arc<UploadBatch>> = (0..500)
        .map(|i| Arc::new(batch(i + 1, 4096, &plugs, &mut key)))
        .collect();
    let records: usize = batches.iter().map(|b| b.records.len()).sum();
    let started = Instant::now();
    for b in &batches {
        pool.dispatch(b.clone());
        pool.decide(b.batch_id, true);
    }
    // The take queues behind every batch, so its answer marks the end of the work.
    let taken = pool
        .take((0..5).map(|w| w * WINDOW).collect())
        .await
        .context("a worker stopped during the run")?;
    let elapsed = started.elapsed().as_secs_f64();
    let groups: usize = taken.values().map(|w| w.groups.len()).sum();
    anyhow::ensure!(groups > 0, "nothing was aggregated");
    Ok(records as f64 / elapsed.max(1e-9))
}

/// Handover pauses of one bucket holding `groups` open groups, moved back and forth; then the
/// time of `checkpoints` durable checkpoints of that state (cut to committed in redb).
async fn migration_pauses(
    groups: usize,
    moves: usize,
    checkpoints: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let pool = Pool::start(config(2, None), WINDOW, Arc::new(InProcess::default()))?;
    let bucket = 7;
    // Plugs of one bucket; each gets a record per (window, metric) cell.
    let windows = 10u64;
    let wanted = groups.div_ceil(2 * windows as usize);
    let mine: Vec<GroupKey> = (0..u32::MAX)
        .map(|i| GroupKey {
            house: i / 1000,
            household: (i / 10) % 100,
            plug: i % 10,
        })
        .filter(|k| bucket_of(k, BUCKETS) == bucket)
        .take(wanted)
        .collect();
    let mut key = 0u64;
    let mut records = Vec::new();
    for w in 0..windows {
        for plug in &mine {
            for metric in [Metric::Load, Metric::Work] {
                key += 1;
                records.push(ShareRecord {
                    key,
                    ts: w * WINDOW + 1,
                    metric,
                    group: *plug,
                    share: record_values(key),
                });
            }
        }
    }
    for (i, chunk) in records.chunks(4096).enumerate() {
        let b = UploadBatch {
            batch_id: BatchId(i as u128 + 1),
            party: 0,
            parties: 1,
            records: chunk.to_vec(),
            histograms: Vec::new(),
        };
        let id = b.batch_id;
        pool.dispatch(Arc::new(b));
        pool.decide(id, true);
    }
    let owners: Vec<WorkerId> = vec![0, 1];
    let first = pool.pauses_ms().len();
    for i in 0..moves {
        pool.migrate(vec![(bucket, owners[(i + 1) % 2])]).await?;
    }
    let pauses = pool.pauses_ms().split_off(first);
    let dir = tempfile::tempdir()?;
    let (values, _) = Store::open(dir.path())?;
    let mut taken = Vec::with_capacity(checkpoints);
    for _ in 0..checkpoints {
        let info = pool
            .checkpoint(|cp| values.save_checkpoint(cp))
            .await?
            .context("no checkpoint could be taken")?;
        anyhow::ensure!(
            info.groups >= groups,
            "checkpoint of {} groups",
            info.groups
        );
        taken.push(info.ms);
    }
    Ok((pauses, taken))
}

/// Seconds from a tenfold load step to records being aggregated by a worker that did not
/// exist before the step.
async fn reaction(period: Duration) -> Result<f64> {
    let cost = Duration::from_micros(20);
    let mut config = config(1, Some(period));
    config.record_cost = cost;
    let pool = Pool::start(config, WINDOW, Arc::new(InProcess { record_cost: cost }))?;
    let plugs = plugs(400);
    let capacity = 1.0 / cost.as_secs_f64();
    let tick = Duration::from_millis(20);
    let mut key = 0;
    let mut id = 0u128;
    let started = Instant::now();
    let mut step_at = None;
    let mut reacted = None;
    while started.elapsed() < Duration::from_secs(20) {
        let now = started.elapsed();
        // A third of one worker's capacity for three periods, then three times it.
        let low = now < period * 3;
        if !low && step_at.is_none() {
            step_at = Some(Instant::now());
        }
        let rate = capacity * if low { 0.3 } else { 3.0 };
        let n = (rate * tick.as_secs_f64()) as usize;
        id += 1;
        let b = batch(id, n.max(1), &plugs, &mut key);
        pool.dispatch(Arc::new(b));
        pool.decide(BatchId(id), true);
        if let Some(at) = step_at {
            if pool.counters().scale_out_steps > 0 && serving_new(&pool) {
                reacted = Some(at.elapsed().as_secs_f64());
                break;
            }
        }
        tokio::time::sleep(tick).await;
    }
    reacted.context("the manager did not scale out within 20 s of the load step")
}

/// Whether a worker started after the first one has aggregated records.
fn serving_new(pool: &Pool) -> bool {
    pool.records_by_new_workers() > 0
}

pub async fn run() -> Result<()> {
    eprintln!("bench --elastic: in-process workers, {BUCKETS} buckets, batches of 4096 records");
    // Best of three, alternating, after a warm-up: the machine is shared, and the best run is
    // the one least disturbed by anything else on it.
    throughput(1).await?;
    let (mut one, mut two) = (0f64, 0f64);
    for _ in 0..3 {
        one = one.max(throughput(1).await?);
        two = two.max(throughput(2).await?);
    }
    eprintln!("1 worker:  {one:.0} records/s");
    eprintln!("2 workers: {two:.0} records/s");
    let (pauses, checkpoints) = migration_pauses(10_000, 200, 20).await?;
    let (p50, p99) = (percentile(&pauses, 0.5), percentile(&pauses, 0.99));
    eprintln!(
        "bucket handover with 10000 open groups, {} moves: p50 {p50:.2} ms, p99 {p99:.2} ms",
        pauses.len()
    );
    let checkpoint_p50 = percentile(&checkpoints, 0.5);
    eprintln!(
        "durable checkpoint of those groups, {} times: p50 {checkpoint_p50:.2} ms, p99 {:.2} ms",
        checkpoints.len(),
        percentile(&checkpoints, 0.99)
    );
    let period = Duration::from_millis(500);
    let reaction = reaction(period).await?;
    eprintln!(
        "load step ×10 to new workers serving: {reaction:.2} s (manager period {} ms)",
        period.as_millis()
    );
    println!("throughput_1_worker={one:.0}");
    println!("throughput_2_workers={two:.0}");
    println!("checkpoint_p50_ms={checkpoint_p50:.2}");
    println!("scale_ratio={:.3}", two / one);
    println!("migration_p99_ms={p99:.2}");
    println!("reaction_s={reaction:.2}");
    Ok(())
}
