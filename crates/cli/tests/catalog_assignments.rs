//! The clouds' bucket → worker maps in the replicated catalog: a map replaces the stored one
//! only under a greater epoch, bad requests are refused by name, and every stored map and
//! refusal survives a restart of every voter at once.

mod common;

use mcloud::cluster::{CatalogSpec, ClusterOptions, LocalCluster};
use mcloud_catalog::{Assignment, CatalogClient, CatalogError, MAX_ASSIGNMENT_BUCKETS};
use std::time::{Duration, Instant};

async fn cluster(dir: &std::path::Path, catalog: CatalogSpec) -> LocalCluster {
    common::cluster(
        dir,
        1,
        ClusterOptions {
            catalog,
            // Parties P and Q are enrolled; no cloud of theirs runs.
            extra_parties: Q,
            ..Default::default()
        },
    )
    .await
}

/// Parties no cloud of the test cluster uses (its cloud 0 writes its own map).
const P: u16 = 7;
const Q: u16 = 8;

fn map(epoch: u64, owners: &[u32]) -> Assignment {
    Assignment {
        epoch,
        owners: owners.to_vec(),
    }
}

/// Retries `put` while the catalog is electing a leader.
async fn put(client: &CatalogClient, party: u16, a: &Assignment) -> Result<(), CatalogError> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match client.put_assignment(party, a).await {
            Err(e) if e.is_retryable() && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => return other,
        }
    }
}

async fn get(client: &CatalogClient, party: u16) -> Option<Assignment> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match client.get_assignment(party).await {
            Ok(a) => return a,
            Err(e) if e.is_retryable() && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("reading a bucket map: {e}"),
        }
    }
}

fn assert_stale(result: Result<(), CatalogError>, epoch: u64, stored: u64) {
    match result {
        Err(CatalogError::StaleEpoch {
            party: P,
            epoch: e,
            stored: s,
        }) if (e, s) == (epoch, stored) => {}
        other => panic!("expected epoch {epoch} to be stale against {stored}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_are_refused_and_survive_a_full_restart() {
    // With snapshots every few entries the maps come back from a snapshot, else from the log.
    for snapshot_every in [5, 5000] {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = cluster(
            dir.path(),
            CatalogSpec {
                partitions: 2,
                snapshot_every,
                ..Default::default()
            },
        )
        .await;
        let client = cluster.cloud_catalog_client(P).unwrap();
        let client_q = cluster.cloud_catalog_client(Q).unwrap();
        assert_eq!(get(&client, P).await, None);
        put(&client, P, &map(3, &[0, 1, 0, 1])).await.unwrap();
        assert_stale(put(&client, P, &map(3, &[1, 1, 1, 1])).await, 3, 3);
        assert_stale(put(&client, P, &map(2, &[1, 1, 1, 1])).await, 2, 3);
        assert_eq!(get(&client, P).await, Some(map(3, &[0, 1, 0, 1])));
        // Every party has its own register.
        put(&client_q, Q, &map(1, &[7])).await.unwrap();
        // ... and only its own cloud writes it.
        assert!(matches!(
            put(&client, Q, &map(2, &[7])).await,
            Err(CatalogError::Call(mcloud_core::http::CallError::Rejected {
                status: 403,
                ..
            }))
        ));
        for epoch in 4..=25 {
            let owners = [epoch as u32 % 3, 1, 2, 0];
            put(&client, P, &map(epoch, &owners)).await.unwrap();
        }
        let last = map(25, &[1, 1, 2, 0]);
        assert_eq!(get(&client, P).await, Some(last.clone()));

        let oversized = Assignment {
            epoch: 99,
            owners: vec![0; MAX_ASSIGNMENT_BUCKETS + 1],
        };
        assert!(matches!(
            put(&client, P, &oversized).await,
            Err(CatalogError::BadAssignment(_))
        ));
        // Epochs are bounded: one at u64::MAX would leave every later map stale.
        for epoch in [0, mcloud_catalog::MAX_EPOCH + 1, u64::MAX] {
            match put(&client, P, &map(epoch, &[0, 1, 0, 1])).await {
                Err(CatalogError::BadAssignment(m)) => assert!(m.contains("epoch"), "{m}"),
                other => panic!("epoch {epoch} was not refused: {other:?}"),
            }
        }
        let url = format!("{}/v1/assignments/not-a-party", cluster.catalog_url());
        let answer = cluster
            .admin_client(0)
            .unwrap()
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 400);
        assert!(answer.text().await.unwrap().contains("not-a-party"));

        for v in 0..3 {
            cluster.stop_catalog(v).await;
        }
        for v in 0..3 {
            cluster.restart_catalog(v).await.unwrap();
        }
        cluster
            .wait_for_catalog_leaders(Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            get(&client, P).await,
            Some(last),
            "snapshot_every {snapshot_every}"
        );
        assert_eq!(get(&client, Q).await, Some(map(1, &[7])));
        assert_stale(put(&client, P, &map(25, &[0, 0, 0, 0])).await, 25, 25);
        assert_stale(put(&client, P, &map(10, &[0, 0, 0, 0])).await, 10, 25);
        put(&client, P, &map(26, &[0, 0, 0, 0])).await.unwrap();
        assert_eq!(get(&client, P).await, Some(map(26, &[0, 0, 0, 0])));
        cluster.shutdown().await;
    }
}
