//! Network partitions and packet loss between real processes: every catalog voter and cloud
//! runs `mcloud node` in a Linux network namespace of its own (`mcloud::netns`). While a
//! sensor uploads, every link first drops a random 10 % of its packets each way (nftables),
//! then links are cut with blackhole routes: the catalog leader from the other voters, a cloud
//! from every voter, the sensor from a cloud and from a voter. After each cut heals, the
//! upload ends with every batch committed once and the revealed sums equal to the plaintext
//! reference. Needs root (network namespaces); prints SKIPPED without, and skips only the
//! loss phase without `nft`.

mod common;
use common::{expected_rows, rows_of, wait_for};

use mcloud::netns::Network;
use mcloud::processes::{ProcessCluster, ProcessSpec, Role};
use std::time::Duration;

const VOTERS: usize = 3;
const PARTIES: usize = 3;

/// Which of `voters` says it leads partition 0.
async fn leader_among(
    cluster: &ProcessCluster,
    http: &reqwest::Client,
    voters: &[usize],
) -> Option<usize> {
    for &i in voters {
        let s = cluster.catalog_status(http, i).await?;
        if s["partitions"][0]["state"] == "Leader" {
            return Some(i);
        }
    }
    None
}

fn applied(status: &serde_json::Value) -> Option<u64> {
    status["partitions"][0]["last_applied"]["index"]
        .as_u64()
        .or_else(|| status["partitions"][0]["last_applied"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_heal_without_losing_or_double_counting_a_reading() {
    if !Network::available() {
        eprintln!(
            "SKIPPED partitions: network namespaces need root (or CAP_NET_ADMIN) and iproute2"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ProcessCluster::write(ProcessSpec {
        parties: PARTIES,
        voters: VOTERS,
        namespaces: true,
        robust: false,
        ..common::process_spec(dir.path())
    })
    .unwrap();
    cluster.start_all().unwrap();
    let http = cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let member = |role| cluster.member(role);

    // Paced, so every cut falls while batches are in flight.
    let mut sensor = common::start_sensor(
        &cluster,
        &[
            "--batch-size",
            "20",
            "--in-flight",
            "2",
            "--speedup",
            "15",
            "--ttl-ms",
            "10000",
        ],
    );
    let net = cluster.network().expect("namespaces were asked for");
    let all: Vec<usize> = (0..VOTERS).collect();

    // 0. Every member loses 10 % of what it sends and receives: TCP retransmits, requests
    //    time out and are retried, and the upload goes on, slower.
    if Network::loss_available() {
        let members = VOTERS + PARTIES;
        for i in 0..members {
            net.lose(i, 100).unwrap();
        }
        tokio::time::sleep(Duration::from_secs(12)).await;
        let mut dropped = 0;
        for i in 0..members {
            dropped += net.stop_losing(i).unwrap();
        }
        eprintln!("packet loss: {dropped} packets dropped in 12 s");
        assert!(dropped > 0, "the loss rules dropped nothing");
    } else {
        eprintln!("SKIPPED packet loss phase: needs `nft` (nftables)");
    }

    // 1. The leader loses both other voters: they elect another, and uploads go on.
    let old = wait_for(30, "a leader", async || {
        leader_among(&cluster, &http, &all).await
    })
    .await;
    let others: Vec<usize> = all.iter().copied().filter(|i| *i != old).collect();
    for &o in &others {
        net.cut(member(Role::Catalog(old)), member(Role::Catalog(o)))
            .unwrap();
    }
    let new = wait_for(30, "a leader on the majority side", async || {
        leader_among(&cluster, &http, &others).await
    })
    .await;
    eprintln!("voter {old} cut off; voter {new} leads the majority");
    tokio::time::sleep(Duration::from_secs(4)).await;
    for &o in &others {
        net.heal(member(Role::Catalog(old)), member(Role::Catalog(o)))
            .unwrap();
    }
    // The old leader rejoins as a follower and catches up.
    wait_for(30, "the cut-off voter catching up", async || {
        let lead = applied(&cluster.catalog_status(&http, new).await?)?;
        let back = cluster.catalog_status(&http, old).await?;
        (back["partitions"][0]["state"] != "Leader" && applied(&back)? >= lead).then_some(())
    })
    .await;

    // 2. A cloud loses every voter: it can neither read flags nor report; the others go on.
    let cloud = member(Role::Cloud(1));
    for v in 0..VOTERS {
        net.cut(cloud, member(Role::Catalog(v))).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for v in 0..VOTERS {
        net.heal(cloud, member(Role::Catalog(v))).unwrap();
    }

    // 3. The sensor loses a cloud, then a voter: its transactions wait and retry.
    let cloud = member(Role::Cloud(2));
    net.cut_host(cloud).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    net.heal_host(cloud).unwrap();
    let voter = member(Role::Catalog(others[0]));
    net.cut_host(voter).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    net.heal_host(voter).unwrap();

    common::sensor_succeeds(&mut sensor, &cluster, 240).await;
    eprintln!("{}", cluster.log_tail("sensor", 2));
    let exited = cluster.exited();
    assert!(exited.is_empty(), "{}", exited.join("\n"));

    let csv = common::query_plugs(&cluster.deployment_path(), 90);
    assert_eq!(
        rows_of(&csv),
        expected_rows(),
        "revealed sums differ from the reference"
    );

    // Every voter holds the same decisions, none open.
    wait_for(60, "voters agreeing on the flags", async || {
        let mut flags = Vec::new();
        for i in 0..VOTERS {
            flags.push(cluster.catalog_status(&http, i).await?["partitions"][0]["flags"].clone());
        }
        let agree = flags.windows(2).all(|w| w[0] == w[1]);
        (agree && flags[0]["open"] == 0).then_some(())
    })
    .await;
}
