//! The replicated catalog in one process: voters behind their own TLS servers, stopped,
//! restarted and cut off from each other while clients keep calling.

mod common;

use mcloud::cluster::{CatalogSpec, ClusterOptions, LocalCluster, GATEWAY};
use mcloud_catalog::{CatalogError, FlagTable};
use mcloud_core::wire::{CreateFlag, FlagState};
use mcloud_core::BatchId;

/// Flag `n` of the gateway sensor, whose session the cluster's catalog clients show.
fn gw(n: u128) -> BatchId {
    BatchId(((GATEWAY.sensor as u128) << 96) | n)
}
use std::time::{Duration, Instant};

async fn cluster(dir: &std::path::Path, catalog: CatalogSpec) -> LocalCluster {
    common::cluster(
        dir,
        1,
        ClusterOptions {
            catalog,
            ..Default::default()
        },
    )
    .await
}

fn create(id: u128, ttl_ms: u64) -> Vec<CreateFlag> {
    vec![CreateFlag {
        id: gw(id),
        ttl_ms,
        robust: false,
    }]
}

/// Polls `check` until it holds, failing after `secs`.
async fn eventually(secs: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            Instant::now() < until,
            "{what} did not happen within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A catalog taking a snapshot every `snapshot_every` entries, with one follower stopped;
/// returns the cluster, the leader and the stopped follower.
async fn with_a_follower_stopped(
    dir: &std::path::Path,
    snapshot_every: u64,
) -> (LocalCluster, u16, u16) {
    let mut cluster = cluster(
        dir,
        CatalogSpec {
            snapshot_every,
            ..Default::default()
        },
    )
    .await;
    let leader = cluster.catalog_leader(0).unwrap();
    let follower = (leader + 1) % 3;
    cluster.stop_catalog(follower).await;
    (cluster, leader, follower)
}

/// `n` flags under random (so full-width) ids, open for ten minutes.
fn random_flags(n: usize) -> Vec<CreateFlag> {
    (0..n)
        .map(|_| CreateFlag {
            id: BatchId::of_sensor(GATEWAY.sensor),
            ttl_ms: 600_000,
            robust: false,
        })
        .collect()
}

/// Restarts `follower` and waits up to `secs` until it has applied what the leader has.
async fn restart_and_catch_up(cluster: &mut LocalCluster, leader: u16, follower: u16, secs: u64) {
    cluster.restart_catalog(follower).await.unwrap();
    eventually(secs, "the restarted voter catching up", async || {
        applied(cluster, follower) >= applied(cluster, leader)
    })
    .await;
}

fn applied(cluster: &LocalCluster, voter: u16) -> Option<u64> {
    cluster.catalog_node(voter)?.status()[0].last_applied
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_voter_catches_up_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, follower) = with_a_follower_stopped(dir.path(), 20).await;
    let flags = cluster.catalog_client().unwrap();
    for id in 0..120u128 {
        flags.create(create(id, 60_000)).await.unwrap();
        if id % 2 == 0 {
            flags.set(vec![gw(id)]).await.unwrap();
        }
    }
    restart_and_catch_up(&mut cluster, leader, follower, 60).await;
    let leader_status = &cluster.catalog_node(leader).unwrap().status()[0];
    assert!(
        leader_status.purged.is_some(),
        "the leader compacted its log: {leader_status:?}"
    );
    let status = &cluster.catalog_node(follower).unwrap().status()[0];
    assert!(
        status.snapshot.is_some(),
        "the follower got a snapshot: {status:?}"
    );
    let counts = status.flags;
    assert_eq!((counts.open, counts.committed), (60, 60));
    // It serves reads (through the leader) and votes again: stopping the leader leaves a
    // majority that includes it.
    cluster.stop_catalog(leader).await;
    let only_follower = cluster.voter_catalog_client(follower).unwrap();
    eventually(60, "a new leader after the old one stopped", async || {
        only_follower.create(create(1000, 60_000)).await.is_ok()
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_majority_refuses_with_503_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), CatalogSpec::default()).await;
    let flags = cluster.catalog_client().unwrap();
    flags.create(create(1, 60_000)).await.unwrap();
    let leader = cluster.catalog_leader(0).unwrap();
    let survivor = (leader + 1) % 3;
    for v in 0..3 {
        if v != survivor {
            cluster.stop_catalog(v).await;
        }
    }
    let e = flags.create(create(2, 60_000)).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("no leader / no quorum"), "{e}");
    let e = flags.set(vec![gw(1)]).await.unwrap_err();
    assert!(e.to_string().contains("503"), "{e}");
    for v in 0..3 {
        if v != survivor {
            cluster.restart_catalog(v).await.unwrap();
        }
    }
    eventually(60, "the catalog taking writes again", async || {
        flags.create(create(2, 60_000)).await.is_ok()
    })
    .await;
    assert_eq!(
        flags.set(vec![gw(1), gw(2)]).await.unwrap()[1].state,
        FlagState::True
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_minority_never_commits() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), CatalogSpec::default()).await;
    let leader = cluster.catalog_leader(0).unwrap();
    let others: Vec<u16> = (0..3).filter(|v| *v != leader).collect();
    let leader_node = cluster.catalog_node(leader).unwrap();
    leader_node
        .faults()
        .isolate_from(others.iter().map(|v| *v as u64 + 1));
    for v in &others {
        cluster
            .catalog_node(*v)
            .unwrap()
            .faults()
            .isolate_from([leader as u64 + 1]);
    }
    let minority = cluster.voter_catalog_client(leader).unwrap();
    let majority = cluster.voter_catalog_client(others[0]).unwrap();
    // The cut-off leader cannot commit: its write fails, and the majority never sees it.
    let e: CatalogError = minority.create(create(7, 60_000)).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    eventually(60, "the majority electing a leader", async || {
        majority.create(create(8, 60_000)).await.is_ok()
    })
    .await;
    assert_eq!(majority.get(vec![gw(7)]).await.unwrap(), vec![None]);
    leader_node.faults().heal();
    for v in &others {
        cluster.catalog_node(*v).unwrap().faults().heal();
    }
    // After healing, the old leader follows the majority's log: its entry is gone everywhere.
    eventually(60, "the old leader rejoining", async || {
        minority
            .get(vec![gw(8)])
            .await
            .is_ok_and(|f| f[0].is_some())
    })
    .await;
    assert_eq!(minority.get(vec![gw(7)]).await.unwrap(), vec![None]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_partitions_split_requests_and_elect_leaders() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(
        dir.path(),
        CatalogSpec {
            partitions: 4,
            ..Default::default()
        },
    )
    .await;
    let flags = cluster.catalog_client().unwrap();
    let reqs: Vec<CreateFlag> = (0..400u128)
        .map(|i| CreateFlag {
            id: gw(i * 1_000_003),
            ttl_ms: 60_000,
            robust: false,
        })
        .collect();
    let ids: Vec<BatchId> = reqs.iter().map(|r| r.id).collect();
    assert_eq!(flags.create(reqs).await.unwrap().len(), 400);
    let set = flags.set(ids[..200].to_vec()).await.unwrap();
    assert!(set.iter().all(|f| f.state == FlagState::True));
    let got = flags.get(ids.clone()).await.unwrap();
    assert!(got[..200]
        .iter()
        .all(|f| f.unwrap().state == FlagState::True));
    assert!(got[200..]
        .iter()
        .all(|f| f.unwrap().state == FlagState::False));
    let status = cluster.catalog_node(0).unwrap().status();
    assert_eq!(status.len(), 4);
    let total: u64 = status
        .iter()
        .map(|p| p.flags.open + p.flags.committed)
        .sum();
    assert_eq!(total, 400);
    assert!(status.iter().all(|p| p.flags.open + p.flags.committed > 0));
    cluster.shutdown().await;
}

/// The applied table lives in memory and redb holds snapshots: after every voter stopped at
/// once, each rebuilds the same decisions from its last snapshot plus the durable log after it
/// (and from the log alone when no snapshot was taken yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_voter_restarted_keeps_every_decision() {
    for snapshot_every in [20, 5000] {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = cluster(
            dir.path(),
            CatalogSpec {
                snapshot_every,
                ..Default::default()
            },
        )
        .await;
        let flags = cluster.catalog_client().unwrap();
        for id in 0..50u128 {
            flags.create(create(id, 600_000)).await.unwrap();
            if id % 2 == 0 {
                flags.set(vec![gw(id)]).await.unwrap();
            }
        }
        let ids: Vec<BatchId> = (0..50u128).map(gw).collect();
        let before = flags.get(ids.clone()).await.unwrap();
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
        let mut after = None;
        eventually(60, "reads after the restart", async || {
            after = flags.get(ids.clone()).await.ok();
            after.is_some()
        })
        .await;
        assert_eq!(after.unwrap(), before, "snapshot_every {snapshot_every}");
        eventually(60, "every voter holding every decision", async || {
            (0..3).all(|v| {
                cluster.catalog_node(v).is_some_and(|n| {
                    let c = n.status()[0].flags;
                    (c.open, c.committed) == (25, 25)
                })
            })
        })
        .await;
        // A decided flag stays decided: SET of a TRUE flag is idempotent, of an open one works.
        let set = flags.set(vec![gw(0), gw(1)]).await.unwrap();
        assert!(set.iter().all(|f| f.state == FlagState::True));
        cluster.shutdown().await;
    }
}

/// A busy day leaves hundreds of thousands of flags in a partition, and its snapshot passes the
/// body limit of any single request: a voter that fell behind the leader's compacted log
/// still catches up, from a snapshot sent in chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_voter_catches_up_from_a_snapshot_larger_than_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, follower) = with_a_follower_stopped(dir.path(), 20).await;
    let flags = cluster.catalog_client().unwrap();
    let total = 400_000;
    for _ in 0..total / 10_000 {
        flags.create(random_flags(10_000)).await.unwrap();
    }
    // Enough entries after the flags that the leader snapshots and compacts past them.
    for id in 0..40u128 {
        flags.create(create(id, 600_000)).await.unwrap();
    }
    restart_and_catch_up(&mut cluster, leader, follower, 120).await;
    let status = &cluster.catalog_node(follower).unwrap().status()[0];
    let received = status.received_snapshot_bytes.unwrap_or(0);
    assert!(
        received > mcloud_core::wire::MAX_BODY_BYTES as u64,
        "the snapshot ({received} bytes) should exceed one request's limit: {status:?}"
    );
    assert_eq!(status.flags.open, total as u64 + 40);
    cluster.shutdown().await;
}

/// Entries of large CREATE requests: a voter that missed several of them is sent them in
/// AppendEntries requests that each stay under the body limit (fewer entries per request),
/// instead of one request the voter would refuse again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_voter_catches_up_through_appends_larger_than_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let default_snapshots = CatalogSpec::default().snapshot_every;
    let (mut cluster, leader, follower) =
        with_a_follower_stopped(dir.path(), default_snapshots).await;
    let flags = cluster.catalog_client().unwrap();
    let per_request = mcloud_core::wire::MAX_FLAGS_PER_REQUEST;
    let requests = 6;
    for _ in 0..requests {
        flags.create(random_flags(per_request)).await.unwrap();
    }
    restart_and_catch_up(&mut cluster, leader, follower, 120).await;
    let status = &cluster.catalog_node(follower).unwrap().status()[0];
    assert_eq!(
        status.snapshot, None,
        "caught up through appends: {status:?}"
    );
    assert_eq!(status.flags.open, (requests * per_request) as u64);
    cluster.shutdown().await;
}

/// A voter that sends a term near `u64::MAX` (which made openraft panic, durably: the vote is
/// stored) or speaks in another voter's name is refused by name, and the catalog goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_voter_can_neither_crash_the_others_nor_speak_for_a_third() {
    use mcloud_catalog::raft::network::Envelope;
    use mcloud_catalog::raft::types::{TypeConfig, Vote};
    use mcloud_core::auth::peer::{PeerIdentity, Role};
    use openraft::raft::{AppendEntriesRequest, VoteRequest};

    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), CatalogSpec::default()).await;
    let catalog = cluster.catalog_client().unwrap();
    catalog.create(create(1, 60_000)).await.unwrap();
    // Voter 2's own certificate: the sender is authenticated, its numbers are not trusted.
    let voter = cluster
        .authority()
        .node(
            PeerIdentity {
                party: 0,
                role: Role::Voter,
                id: 2,
            },
            &[],
        )
        .unwrap();
    let http = voter
        .identity
        .client(&cluster.authority().party_cas())
        .unwrap();
    let send = |url: String, body: Vec<u8>| {
        let http = http.clone();
        async move {
            let r = http.post(url).body(body).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (
                status,
                body["code"].as_str().unwrap_or("").to_string(),
                body,
            )
        }
    };
    for target in [0, 2] {
        let base = &cluster.catalog_urls()[target];
        let huge = Envelope {
            from: 2,
            body: AppendEntriesRequest::<TypeConfig> {
                vote: Vote::new_committed(u64::MAX, 2),
                prev_log_id: None,
                entries: Vec::new(),
                leader_commit: None,
            },
        };
        let (status, code, body) = send(
            format!("{base}/v1/raft/0/append"),
            postcard::to_stdvec(&huge).unwrap(),
        )
        .await;
        assert_eq!(
            (status, code.as_str()),
            (400, "raft_out_of_bounds"),
            "{body}"
        );
        assert!(
            body["error"].as_str().unwrap().contains("vote term"),
            "{body}"
        );
        let for_another = Envelope {
            from: 2,
            body: VoteRequest {
                vote: Vote::new(7, 3),
                last_log_id: None,
            },
        };
        let (status, code, body) = send(
            format!("{base}/v1/raft/0/vote"),
            postcard::to_stdvec(&for_another).unwrap(),
        )
        .await;
        assert_eq!((status, code.as_str()), (403, "wrong_sender"), "{body}");
    }
    // Nobody's term moved, and the catalog still commits.
    for url in cluster.catalog_urls() {
        let status = common::json(&cluster.http(), &format!("{url}/v1/status")).await;
        let term = status["partitions"][0]["term"].as_u64().unwrap();
        assert!(term < 100, "{url}: term {term}");
    }
    let committed = catalog.set(vec![gw(1)]).await.unwrap();
    assert_eq!(committed[0].state, FlagState::True);
}
