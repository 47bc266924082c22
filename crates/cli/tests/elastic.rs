//! Exactly once under churn: in every cloud, buckets move between worker processes, workers
//! come and go, and worker processes are SIGKILLed (their buckets rebuilt elsewhere from the
//! latest checkpoint and the values table) while batches arrive and flags are decided, and the
//! revealed aggregates still equal the plaintext reference to the last unit.

mod common;

use mcloud::cluster::{ClusterOptions, LocalCluster};
use mcloud::demo::{finish_pipeline, send_readings, PipelineArgs};
use mcloud_cloud::elastic::{ElasticConfig, Thresholds};
use mcloud_cloud::CloudNode;
use mcloud_collector::Query;
use mcloud_core::reading::GroupLevel;
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::Reading;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUCKETS: usize = 256;

const PIPELINE: PipelineArgs = PipelineArgs {
    batch_size: 200,
    in_flight: 4,
    ttl_ms: 3000,
    speedup: None,
    histograms: false,
};

/// Every window, per plug, nothing withheld.
const QUERY: Query = Query {
    from: 0,
    to: u64::MAX,
    level: GroupLevel::Plug,
    min_count: 1,
};

/// Synthetic readings every 2 s from `houses` × 2 households × `plugs` plugs.
fn readings(houses: u32, plugs: u32, minutes: u64) -> Vec<Reading> {
    Synthetic::new(SyntheticConfig {
        houses,
        households_per_house: 2,
        plugs_per_household: plugs,
        duration_secs: minutes * 60,
        interval_secs: 2,
        ..Default::default()
    })
    .collect()
}

/// Random migrations and scaling steps on one cloud until told to stop.
async fn churn(node: Arc<CloudNode>, stop: Arc<AtomicBool>, seed: u64) -> (usize, u64, u64) {
    let pool = node.pool().clone();
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut moved = 0;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let status = pool.status();
        let workers: Vec<u32> = status["workers"]
            .as_object()
            .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
            .unwrap_or_default();
        // A handover or scaling step racing a worker's crash may fail; what matters is that
        // nothing is lost, which the final check decides.
        if round % 25 == 10 {
            // SIGKILL one worker process, as an operator's `kill -9` or the OOM killer would.
            let pids: Vec<u64> = status["pids"]
                .as_object()
                .map(|m| m.values().filter_map(|p| p.as_u64()).collect())
                .unwrap_or_default();
            if let Some(pid) = pids.get((next() as usize) % pids.len().max(1)) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        } else if round % 3 == 0 {
            let n = 1 + (next() % 4) as usize;
            if let Err(e) = pool.scale_to(n).await {
                eprintln!("scaling: {e}");
            }
        } else {
            let moves = (0..12)
                .filter_map(|_| {
                    let to = *workers.get((next() as usize) % workers.len().max(1))?;
                    Some(((next() as usize) % BUCKETS, to))
                })
                .collect();
            match pool.migrate(moves).await {
                Ok(n) => moved += n,
                Err(e) => eprintln!("migrating: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = pool.counters();
    (
        moved,
        c.scale_out_steps + c.scale_in_steps,
        c.workers_recovered,
    )
}

/// Clouds whose pools start with two `mcloud worker` processes, scale up to four, and are
/// driven by the test (no manager period).
async fn cluster_with_worker_processes(dir: &std::path::Path, parties: u16) -> LocalCluster {
    let elastic = ElasticConfig {
        buckets: BUCKETS,
        workers: 2,
        period: None,
        worker_program: Some(env!("CARGO_BIN_EXE_mcloud").into()),
        // Often, so rebuilds start from checkpoints taken amid the churn.
        checkpoint_period: Some(Duration::from_millis(300)),
        thresholds: Thresholds {
            max_workers: 4,
            ..Thresholds::default()
        },
        ..ElasticConfig::default()
    };
    common::cluster(
        dir,
        parties,
        ClusterOptions {
            elastic,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revealed_sums_are_exact_under_migrations_and_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_with_worker_processes(dir.path(), 3).await;
    let readings = readings(4, 4, 40);
    let pipeline = PIPELINE;
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..3)
        .map(|party| {
            let node = cluster.cloud(party).unwrap();
            tokio::spawn(churn(node, stop.clone(), 0x9E37 + u64::from(party)))
        })
        .collect();
    let started = Instant::now();
    // Some batches end ERROR (their sensor dies before SET): migrations carry their pending
    // partials too, and every cloud must still drop them.
    let report = send_readings(&cluster, &readings, &pipeline, 0.05, 11, false)
        .await
        .unwrap();
    // Windows are still open and flags may still be pending: keep churning until every cloud
    // has done enough, then close the windows.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = (0..3).all(|p| {
            let c = cluster.cloud(p).unwrap().pool().counters();
            c.migrations >= 100
                && c.scale_out_steps + c.scale_in_steps >= 10
                && c.workers_recovered >= 1
        });
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for party in 0..3 {
        let pool = cluster.cloud(party).unwrap().pool().clone();
        assert!(
            pool.last_checkpoint().is_some(),
            "cloud {party} took no checkpoint"
        );
    }
    for (party, c) in churners.into_iter().enumerate() {
        let (moved, steps, recovered) = c.await.unwrap();
        assert!(moved >= 100, "cloud {party}: only {moved} migrations");
        assert!(steps >= 10, "cloud {party}: only {steps} scaling steps");
        assert!(
            recovered >= 1,
            "cloud {party}: no worker crashed and was replaced"
        );
    }
    let run = finish_pipeline(&cluster, &readings, report, &pipeline, &QUERY, started)
        .await
        .unwrap();
    cluster.shutdown().await;
    assert!(run.check.ok(), "{:?}", run.check.problems);
    assert!(run.check.matched > 0);
    assert!(!run.report.crashed.is_empty(), "no batch ended ERROR");
}

/// Workers as `mcloud worker` processes: buckets move between processes, the pool scales, and
/// one worker process is SIGKILLed mid-run; its buckets are rebuilt and the sums stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_processes_survive_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_with_worker_processes(dir.path(), 2).await;
    let readings = readings(3, 3, 20);
    let pipeline = PIPELINE;
    let started = Instant::now();
    let (first, second) = readings.split_at(readings.len() / 2);
    let mut report = send_readings(&cluster, first, &pipeline, 0.0, 3, false)
        .await
        .unwrap();
    let node = cluster.cloud(0).unwrap();
    let pool = node.pool().clone();
    // The rebuild below starts from state the worker processes sent for this checkpoint.
    let checkpoint = node.checkpoint().await.unwrap().expect("a checkpoint");
    assert!(checkpoint.groups > 0);
    pool.scale_to(3).await.unwrap();
    let moves = (0..BUCKETS)
        .step_by(5)
        .map(|b| (b, (b % 3) as u32))
        .collect();
    pool.migrate(moves).await.unwrap();
    let pids = pool.status()["pids"].clone();
    let pid = pids
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|p| p.as_u64())
        .expect("a worker process");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.counters().workers_recovered == 0 {
        assert!(
            Instant::now() < deadline,
            "the killed worker was not replaced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rest = send_readings(&cluster, second, &pipeline, 0.0, 4, false)
        .await
        .unwrap();
    report.committed_batches += rest.committed_batches;
    report.missed.extend(rest.missed);
    report.rejected.extend(rest.rejected);
    pool.scale_to(1).await.unwrap();
    let run = finish_pipeline(&cluster, &readings, report, &pipeline, &QUERY, started)
        .await
        .unwrap();
    cluster.shutdown().await;
    assert!(run.check.ok(), "{:?}", run.check.problems);
    assert!(run.check.matched > 0);
}
