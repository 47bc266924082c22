//! A cloud's bucket → worker map in the catalog: after migrations and scaling the catalog
//! holds the pool's current map and epoch, a restarted cloud continues above the stored epoch
//! with the workers and assignment stored, and a pool behind the catalog's epoch moves above it.

mod common;

use mcloud::cluster::{ClusterOptions, LocalCluster};
use mcloud_catalog::{Assignment, CatalogClient};
use mcloud_cloud::elastic::{ElasticConfig, Pool, Thresholds};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUCKETS: usize = 64;

async fn cluster(dir: &std::path::Path) -> LocalCluster {
    let elastic = ElasticConfig {
        buckets: BUCKETS,
        workers: 2,
        period: None,
        thresholds: Thresholds {
            max_workers: 4,
            ..Thresholds::default()
        },
        ..ElasticConfig::default()
    };
    common::cluster(
        dir,
        1,
        ClusterOptions {
            elastic,
            ..Default::default()
        },
    )
    .await
}

fn current(pool: &Pool) -> Assignment {
    let map = pool.map();
    Assignment {
        epoch: map.epoch,
        owners: map.owners.to_vec(),
    }
}

/// Waits until the catalog holds `pool`'s current map, which the node's status reports.
async fn catalog_catches_up(catalog: &CatalogClient, pool: &Pool) -> Assignment {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let want = current(pool);
        let stored = catalog.get_assignment(0).await.ok().flatten();
        if stored.as_ref() == Some(&want) && pool.persisted_epoch() == Some(want.epoch) {
            return want;
        }
        assert!(
            Instant::now() < until,
            "catalog holds {:?}, pool is at epoch {}",
            stored.map(|s| s.epoch),
            want.epoch
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_holds_the_current_map_across_migrations_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path()).await;
    let catalog = cluster.cloud_catalog_client(0).unwrap();
    let pool: Arc<Pool> = cluster.cloud(0).unwrap().pool().clone();
    catalog_catches_up(&catalog, &pool).await;

    pool.scale_to(3).await.unwrap();
    for round in 0..10usize {
        let moves = (0..5)
            .map(|k| ((round * 7 + k * 13) % BUCKETS, ((round + k) % 3) as u32))
            .collect();
        pool.migrate(moves).await.unwrap();
    }
    // Workers 0, 1 and 2 remain (a scale-in removes the newest), one more than the node's
    // configuration starts with.
    pool.scale_to(4).await.unwrap();
    pool.scale_to(3).await.unwrap();
    // Uneven on purpose, so a restart that fell back to the even spread would show.
    pool.migrate((0..10).map(|b| (b, 1)).collect())
        .await
        .unwrap();
    let stored = catalog_catches_up(&catalog, &pool).await;
    assert!(stored.epoch > 10, "epoch {}", stored.epoch);
    let status = cluster.cloud(0).unwrap().status();
    assert_eq!(
        status["elastic"]["catalog_epoch"].as_u64(),
        Some(stored.epoch)
    );
    drop(pool);

    cluster.stop_cloud(0).await;
    cluster.restart_cloud(0).await.unwrap();
    let pool = cluster.cloud(0).unwrap().pool().clone();
    let restarted = current(&pool);
    assert!(
        restarted.epoch > stored.epoch,
        "restarted at epoch {} after {}",
        restarted.epoch,
        stored.epoch
    );
    // The workers the stored map names start again, so every bucket stays where it was.
    assert_eq!(pool.workers(), 3);
    assert_eq!(restarted.owners, stored.owners);
    let after_restart = catalog_catches_up(&catalog, &pool).await;
    assert_eq!(after_restart.epoch, restarted.epoch);

    // A catalog ahead of the pool (a map the node could not read at start): the pool's next
    // map is refused as stale and the pool continues above the stored epoch.
    let ahead = Assignment {
        epoch: restarted.epoch + 100,
        owners: restarted.owners.clone(),
    };
    catalog.put_assignment(0, &ahead).await.unwrap();
    pool.migrate(vec![(0, 0)]).await.unwrap();
    let caught_up = catalog_catches_up(&catalog, &pool).await;
    assert!(caught_up.epoch > ahead.epoch, "epoch {}", caught_up.epoch);
    assert_eq!(caught_up.owners[0], 0);
    cluster.shutdown().await;
}

/// The catalog holds every map before the pool routes by it: right after a migration returns
/// the catalog already has it, and without a catalog quorum no map changes at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_map_is_routed_before_the_catalog_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path()).await;
    let catalog = cluster.cloud_catalog_client(0).unwrap();
    let pool: Arc<Pool> = cluster.cloud(0).unwrap().pool().clone();
    let other = |pool: &Pool, b: usize| 1 - pool.map().owners[b];
    for b in 0..5 {
        pool.migrate(vec![(b, other(&pool, b))]).await.unwrap();
        let stored = catalog.get_assignment(0).await.unwrap();
        assert_eq!(stored, Some(current(&pool)), "after moving bucket {b}");
    }

    let voters = cluster.catalog_voters();
    for v in 1..voters {
        cluster.stop_catalog(v).await;
    }
    let before = current(&pool);
    let err = pool
        .migrate(vec![(0, other(&pool, 0))])
        .await
        .expect_err("a migration without a catalog quorum");
    assert!(err.to_string().contains("bucket map"), "{err}");
    assert_eq!(
        current(&pool),
        before,
        "the map changed without the catalog"
    );

    for v in 1..voters {
        cluster.restart_catalog(v).await.unwrap();
    }
    cluster
        .wait_for_catalog_leaders(Duration::from_secs(30))
        .await
        .unwrap();
    pool.migrate(vec![(0, other(&pool, 0))]).await.unwrap();
    assert_ne!(current(&pool).owners, before.owners);
    assert_eq!(
        catalog.get_assignment(0).await.unwrap(),
        Some(current(&pool))
    );
    cluster.shutdown().await;
}
