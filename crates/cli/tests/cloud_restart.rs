//! A cloud restarted from disk starts from its stored checkpoint and sealed windows, routes only
//! the batches the checkpoint lacks, and still reveals exactly the plaintext reference; a worker
//! that fails after the restart is rebuilt from the same checkpoint.

mod common;

use mcloud::cluster::{ClusterOptions, ClusterSpec, LocalCluster, GATEWAY};
use mcloud_client::{Fate, Outcome, PlainBatch, Uploader};
use mcloud_cloud::elastic::ElasticConfig;
use mcloud_collector::Reference;
use mcloud_core::reading::GroupLevel;
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::Reading;
use std::time::{Duration, Instant};

const WINDOW: u64 = 60;

async fn upload(uploader: &Uploader, batches: &[Vec<Reading>]) {
    for readings in batches {
        let outcome = uploader
            .transact(
                &PlainBatch::new(GATEWAY.sensor, readings.clone()),
                Fate::Complete,
            )
            .await
            .expect("transaction");
        assert!(matches!(outcome, Outcome::Committed), "{outcome:?}");
    }
}

/// Two clouds of two workers each, whose checkpoints the test takes at chosen points.
async fn two_clouds(dir: &std::path::Path) -> LocalCluster {
    let elastic = ElasticConfig {
        buckets: 32,
        workers: 2,
        period: None,
        checkpoint_period: None,
        ..ElasticConfig::default()
    };
    LocalCluster::start_with(
        ClusterSpec {
            parties: 2,
            window_secs: WINDOW,
            grace_secs: WINDOW,
            dir: dir.to_path_buf(),
        },
        ClusterOptions {
            elastic,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// 20 minutes of 2 houses of 3 plugs per household, and their per-plug reference.
fn readings(households: u32, interval_secs: u64) -> (Vec<Reading>, Reference) {
    let readings: Vec<Reading> = Synthetic::new(SyntheticConfig {
        houses: 2,
        households_per_house: households,
        plugs_per_household: 3,
        duration_secs: 20 * 60,
        interval_secs,
        ..Default::default()
    })
    .collect();
    let mut reference = Reference::new(WINDOW, GroupLevel::Plug);
    for r in &readings {
        reference.add(r);
    }
    (readings, reference)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cloud_resumes_from_its_checkpoint_and_sealed_windows() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = two_clouds(dir.path()).await;
    let (readings, reference) = readings(2, 5);
    let batches: Vec<Vec<Reading>> = readings.chunks(100).map(<[Reading]>::to_vec).collect();
    let (first, rest) = batches.split_at(batches.len() / 2);
    let (second, third) = rest.split_at(rest.len() / 2);
    let uploader = cluster.uploader(Duration::from_secs(5)).unwrap();

    upload(&uploader, first).await;
    // Closes the first windows, which the clouds then seal and store.
    let mid = first.last().and_then(|b| b.last()).map(|r| r.ts).unwrap();
    uploader.advance_watermark(mid, false).await.unwrap();
    let node = cluster.cloud(0).unwrap();
    let info = node.checkpoint().await.unwrap().expect("a checkpoint");
    assert_eq!(info.covered, first.len());
    upload(&uploader, second).await;
    assert_eq!(node.pool().uncheckpointed(), second.len());
    let sealed_before = node.status()["windows"].as_u64().unwrap()
        - node.status()["windows_in_workers"].as_u64().unwrap();
    assert!(sealed_before > 0, "no window was sealed before the restart");
    drop(node);

    cluster.restart_cloud(0).await.unwrap();
    let node = cluster.cloud(0).unwrap();
    assert_eq!(
        node.pool().uncheckpointed(),
        second.len(),
        "a restart routes exactly the batches its checkpoint lacks"
    );
    // A worker lost after the restart is rebuilt from the stored checkpoint.
    assert!(node.crash_worker(1));
    let until = Instant::now() + Duration::from_secs(30);
    while node.pool().needs_recovery() || node.pool().counters().workers_recovered == 0 {
        assert!(Instant::now() < until, "the failed worker was not replaced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(node);

    upload(&uploader, third).await;
    let last = readings.iter().map(|r| r.ts).max().unwrap();
    uploader.advance_watermark(last, true).await.unwrap();
    common::assert_reveals(&cluster, &reference, GroupLevel::Plug).await;
    cluster.shutdown().await;
}

/// A restart does not replay a batch whose windows were all sealed before it: such a batch
/// is restored as decided, its shares are in the stored sums, and a replayed partial would
/// wait in a worker for a flag nobody sends, carried by every later checkpoint. Such batches
/// are folded: the values table drops their shares and keeps their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_leaves_batches_of_sealed_windows_out_of_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = two_clouds(dir.path()).await;
    let (readings, reference) = readings(1, 10);
    let batches: Vec<Vec<Reading>> = readings.chunks(60).map(<[Reading]>::to_vec).collect();
    let (first, second) = batches.split_at(batches.len() / 2);
    let uploader = cluster.uploader(Duration::from_secs(5)).unwrap();
    upload(&uploader, first).await;
    let node = cluster.cloud(0).unwrap();
    node.checkpoint().await.unwrap().expect("a checkpoint");
    // The rest after the checkpoint, every window closed and sealed before the restart.
    upload(&uploader, second).await;
    let last = readings.iter().map(|r| r.ts).max().unwrap();
    uploader.advance_watermark(last, true).await.unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while node.status()["windows_in_workers"].as_u64() != Some(0) {
        assert!(Instant::now() < until, "windows were not sealed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.pool().uncheckpointed(), second.len());
    // Every batch is folded into its sealed windows: the values table keeps its id, not its
    // shares.
    let all = batches.len() as u64;
    while node.status()["retention"]["folded_batches"].as_u64() != Some(all) {
        assert!(Instant::now() < until, "{}", node.status()["retention"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        node.status()["retention"]["stored_batches"].as_u64(),
        Some(all)
    );
    drop(node);

    cluster.restart_cloud(0).await.unwrap();
    let node = cluster.cloud(0).unwrap();
    assert_eq!(
        node.pool().uncheckpointed(),
        0,
        "batches of sealed windows were replayed"
    );
    // A retry of any of them is still recognised as one: every id is known again.
    assert_eq!(node.status()["batches"].as_u64(), Some(all));
    let info = node.checkpoint().await.unwrap().expect("a checkpoint");
    assert_eq!(info.buckets, 0, "the workers hold something: {info:?}");
    drop(node);
    common::assert_reveals(&cluster, &reference, GroupLevel::Plug).await;
    cluster.shutdown().await;
}
