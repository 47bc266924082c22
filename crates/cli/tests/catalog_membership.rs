//! Catalog membership changed at run time with `mcloud catalog`, against real processes, while
//! a sensor keeps uploading: a fourth node joins as a voter of every partition, the leader is
//! removed and stopped, and the upload still ends with every batch decided the same way on
//! every voter and the revealed sums equal to the plaintext reference.

mod common;
use common::{expected_rows, rows_of, wait_for, BIN};

use mcloud::processes::{ProcessCluster, ProcessSpec, Role};
use std::process::{Command, Output};
use std::time::Duration;

fn catalog(cluster: &ProcessCluster, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("catalog")
        .arg("--deployment")
        .arg(cluster.deployment_path())
        .args(args)
        .output()
        .unwrap()
}

fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "the command should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The voters of every partition, as catalog node `i` sees them.
async fn voters(
    cluster: &ProcessCluster,
    http: &reqwest::Client,
    i: usize,
) -> Option<Vec<Vec<u64>>> {
    let s = cluster.catalog_status(http, i).await?;
    s["partitions"]
        .as_array()?
        .iter()
        .map(|p| {
            p["voters"]
                .as_array()
                .map(|v| v.iter().filter_map(|x| x.as_u64()).collect())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_are_added_and_removed_while_uploads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ProcessCluster::write(ProcessSpec {
        spare_catalogs: 1,
        partitions: 2,
        ..common::process_spec(dir.path())
    })
    .unwrap();
    cluster.start_all().unwrap();
    cluster.start(Role::Catalog(3)).unwrap();
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let joining = Role::Catalog(3);
    let (url, ca) = (cluster.catalog_url(3), cluster.catalog_ca(3));
    let ca = ca.to_str().unwrap();
    // A client that pins the joining node's CA too, once it exists.
    let http = wait_for(60, "the joining node's status", async || {
        let http = cluster.http().ok()?;
        cluster.catalog_status(&http, 3).await.map(|_| http)
    })
    .await;

    // Paced, so the membership changes happen while batches are in flight.
    let mut sensor = common::start_sensor(
        &cluster,
        &["--batch-size", "20", "--in-flight", "2", "--speedup", "40"],
    );

    // Wrong requests are refused with the reason and change nothing.
    let err = failure(&catalog(
        &cluster,
        &[
            "add-voter",
            "--id",
            "4",
            "--url",
            "https://127.0.0.1:1",
            "--ca",
            ca,
        ],
    ));
    assert!(err.contains("unreachable"), "{err}");
    let err = failure(&catalog(
        &cluster,
        &["add-voter", "--id", "5", "--url", &url, "--ca", ca],
    ));
    assert!(err.contains("says it is node Some(4)"), "{err}");
    let err = failure(&catalog(&cluster, &["remove", "--id", "9"]));
    assert!(err.contains("node 9 is not a member"), "{err}");
    assert_eq!(
        voters(&cluster, &http, 0).await.unwrap(),
        vec![vec![1, 2, 3]; 2]
    );

    success(&catalog(
        &cluster,
        &["add-voter", "--id", "4", "--url", &url, "--ca", ca],
    ));
    wait_for(30, "node 4 voting in every partition", async || {
        let v = voters(&cluster, &http, 3).await?;
        (v == vec![vec![1, 2, 3, 4]; 2]).then_some(())
    })
    .await;
    let err = failure(&catalog(
        &cluster,
        &["add-voter", "--id", "4", "--url", &url, "--ca", ca],
    ));
    assert!(err.contains("already a voter"), "{err}");

    // Remove the leader of partition 0 from every partition, then stop it.
    let leader = wait_for(30, "a leader", async || {
        cluster.catalog_leader(&http, 0).await
    })
    .await;
    let leader_id = (leader + 1).to_string();
    success(&catalog(&cluster, &["remove", "--id", &leader_id]));
    cluster.kill(Role::Catalog(leader)).unwrap();
    let expected: Vec<u64> = (1..=4).filter(|id| *id != leader as u64 + 1).collect();
    wait_for(30, "the leader gone from every partition", async || {
        let v = voters(&cluster, &http, 3).await?;
        (v == vec![expected.clone(); 2]).then_some(())
    })
    .await;
    let status = catalog(&cluster, &["status"]);
    success(&status);
    assert!(String::from_utf8_lossy(&status.stdout).contains("Leader"));

    common::sensor_succeeds(&mut sensor, &cluster, 180).await;
    assert!(cluster.is_running(joining));

    assert_eq!(
        rows_of(&common::query_plugs(&cluster.deployment_path(), 60)),
        expected_rows()
    );

    // The remaining voters, the new one included, hold the same decisions, none open.
    let remaining: Vec<usize> = (0..4).filter(|i| *i != leader).collect();
    wait_for(60, "voters agreeing on the flags", async || {
        let mut all = Vec::new();
        for &i in &remaining {
            let s = cluster.catalog_status(&http, i).await?;
            let flags: Vec<_> = s["partitions"]
                .as_array()?
                .iter()
                .map(|p| p["flags"].clone())
                .collect();
            all.push(flags);
        }
        let agree = all.windows(2).all(|w| w[0] == w[1]);
        let open = all[0].iter().any(|f| f["open"] != 0);
        (agree && !open).then_some(())
    })
    .await;
}
