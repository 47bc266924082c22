//! Retention: a cloud keeps sealed windows and the batches behind them for `retention_secs`
//! back from the newest closed window, drops the rest from memory and disk, refuses ranges
//! that reach before the horizon by name, and keeps all of that across a restart — while
//! what it still holds reveals exactly the plaintext reference.

mod common;

use mcloud::cluster::{ClusterOptions, LocalCluster, GATEWAY};
use mcloud_catalog::FlagTable;
use mcloud_client::{Fate, Outcome, PlainBatch};
use mcloud_collector::Reference;
use mcloud_core::reading::GroupLevel;
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::Reading;
use std::time::Duration;

const WINDOW: u64 = 60;
const RETENTION: u64 = mcloud_cloud::MIN_RETENTION_SECS;

fn retention(cluster: &LocalCluster, party: u16) -> serde_json::Value {
    cluster.cloud(party).unwrap().status()["retention"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_past_the_horizon_leave_memory_and_disk_and_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = common::cluster(
        dir.path(),
        2,
        ClusterOptions {
            retention_secs: Some(RETENTION),
            ..Default::default()
        },
    )
    .await;
    // Twelve hours of two plugs, once a minute, in batches of 25 minutes: some batches
    // straddle the (hour-aligned) horizon, kept for their later windows only.
    let readings: Vec<Reading> = Synthetic::new(SyntheticConfig {
        houses: 1,
        households_per_house: 1,
        plugs_per_household: 2,
        duration_secs: 12 * 3600,
        interval_secs: 60,
        ..Default::default()
    })
    .collect();
    let batches: Vec<Vec<Reading>> = readings.chunks(50).map(<[Reading]>::to_vec).collect();
    let uploader = cluster.uploader(Duration::from_secs(30)).unwrap();
    for b in &batches {
        let outcome = uploader
            .transact(&PlainBatch::new(GATEWAY.sensor, b.clone()), Fate::Complete)
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Committed);
    }
    let last = readings.iter().map(|r| r.ts).max().unwrap();
    uploader.advance_watermark(last, true).await.unwrap();

    // The horizon: the retention back from the end of the newest closed window (the end of
    // the stream closes every window), aligned down to the longest block of the disclosure
    // policy (an hour by default).
    let window = |ts: u64| ts - ts % WINDOW;
    let closed_before = window(last) + WINDOW;
    let raw = closed_before - RETENTION;
    let horizon = raw - raw % 3600;
    let kept_windows = readings
        .iter()
        .map(|r| window(r.ts))
        .filter(|&w| w >= horizon && w + WINDOW <= closed_before)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let kept_batches = batches
        .iter()
        .filter(|b| b.iter().map(|r| window(r.ts)).max().unwrap() >= horizon)
        .count() as u64;
    assert!(kept_batches < batches.len() as u64 / 2);
    for party in 0..2 {
        common::wait_for(60, "the retention horizon", async || {
            let r = retention(&cluster, party);
            let done = r["retained_from"] == horizon && r["stored_windows"] == kept_windows;
            if !done {
                eprintln!("party {party}: {r}, waiting for {horizon} and {kept_windows} windows");
            }
            done.then_some(())
        })
        .await;
        let r = retention(&cluster, party);
        assert_eq!(r["stored_batches"], kept_batches, "party {party}: {r}");
        assert_eq!(r["batches_in_memory"], kept_batches, "party {party}: {r}");
        assert!(
            r["windows_in_memory"].as_u64().unwrap() <= kept_windows + 2,
            "party {party}: {r}"
        );
    }

    let owner = cluster
        .app_client(&cluster.owner_token(0..1).unwrap())
        .unwrap();
    let range = |cluster: &LocalCluster, from: u64, to: u64| {
        let url = format!("{}/v1/range?from={from}&to={to}", cluster.cloud_urls()[0]);
        let owner = owner.clone();
        async move {
            let r = owner.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (status, body)
        }
    };
    let refused = |(status, body): (u16, serde_json::Value)| {
        assert_eq!(status, 410, "{body}");
        assert_eq!(body["code"], "past_retention", "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains(&horizon.to_string()),
            "{body}"
        );
    };
    refused(range(&cluster, horizon - 3600, horizon).await);
    refused(range(&cluster, horizon - 60, horizon + 3600).await);
    assert_eq!(range(&cluster, horizon, horizon + 3600).await.0, 200);

    // What is kept reveals exactly the plaintext reference over the kept windows.
    let mut reference = Reference::new(WINDOW, GroupLevel::Plug);
    for r in readings.iter().filter(|r| r.ts >= horizon) {
        reference.add(r);
    }
    common::assert_reveals(&cluster, &reference, GroupLevel::Plug).await;

    // A restart finds the horizon, the kept windows and batches and nothing else.
    let before = retention(&cluster, 0);
    cluster.restart_cloud(0).await.unwrap();
    let after = retention(&cluster, 0);
    for field in ["retained_from", "stored_windows", "stored_batches"] {
        assert_eq!(before[field], after[field], "{field}: {before} vs {after}");
    }
    refused(range(&cluster, horizon - 3600, horizon).await);
    assert_eq!(range(&cluster, horizon, horizon + 3600).await.0, 200);
    // The restarted cloud replayed the straddling batches for their kept windows only: it
    // holds no window the other has dropped, and both still reveal the reference.
    common::assert_reveals(&cluster, &reference, GroupLevel::Plug).await;
    cluster.shutdown().await;
}

/// With an archive, windows leave the values table only once the archive holds them: while
/// the storage cannot take them nothing is dropped and every window still answers; once it
/// can, the next sealing archives them and they answer from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_stay_until_the_archive_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let sources: Vec<std::path::PathBuf> = (0..3)
        .map(|id| dir.path().join(format!("source{id}")))
        .collect();
    let storage = (0..3)
        .map(|id| mcloud_store::source::SourceConfig::local(id, sources[id as usize].clone()))
        .collect();
    let cluster = common::cluster(
        dir.path(),
        2,
        ClusterOptions {
            retention_secs: Some(RETENTION),
            storage,
            ..Default::default()
        },
    )
    .await;
    // Every source is a file where its directory should be: no blob can be written.
    for source in &sources {
        let _ = std::fs::remove_dir_all(source);
        std::fs::write(source, b"not a directory").unwrap();
    }
    let readings: Vec<Reading> = Synthetic::new(SyntheticConfig {
        houses: 1,
        households_per_house: 1,
        plugs_per_household: 2,
        duration_secs: 8 * 3600,
        interval_secs: 60,
        ..Default::default()
    })
    .collect();
    let uploader = cluster.uploader(Duration::from_secs(30)).unwrap();
    let upload = async |part: &[Reading]| {
        let batch = PlainBatch::new(GATEWAY.sensor, part.to_vec());
        let outcome = uploader.transact(&batch, Fate::Complete).await.unwrap();
        assert_eq!(outcome, Outcome::Committed);
    };
    let close = async |readings: &[Reading]| {
        let last = readings.iter().map(|r| r.ts).max().unwrap();
        uploader.advance_watermark(last, true).await.unwrap();
    };
    for part in readings.chunks(50) {
        upload(part).await;
    }
    close(&readings).await;
    let window = |ts: u64| ts - ts % WINDOW;
    let all_windows = |readings: &[Reading]| {
        let last = readings.iter().map(|r| r.ts).max().unwrap();
        (readings.iter().map(|r| window(r.ts)))
            .filter(|&w| w + WINDOW <= window(last) + WINDOW)
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64
    };
    let closed = all_windows(&readings);
    for party in 0..2 {
        common::wait_for(60, "every window sealed and stored", async || {
            let r = retention(&cluster, party);
            (r["stored_windows"] == closed).then_some(())
        })
        .await;
        let r = retention(&cluster, party);
        assert_eq!(r["retained_from"], 0, "party {party}: {r}");
        assert_eq!(r["archive"]["hours"], 0, "party {party}: {r}");
    }
    let mut reference = Reference::new(WINDOW, GroupLevel::Plug);
    for r in &readings {
        reference.add(r);
    }
    common::assert_reveals(&cluster, &reference, GroupLevel::Plug).await;

    // The storage is back: the next window sealed archives what passed the horizon.
    for source in &sources {
        std::fs::remove_file(source).unwrap();
        std::fs::create_dir_all(source).unwrap();
    }
    let last = readings.iter().map(|r| r.ts).max().unwrap();
    let more: Vec<Reading> = readings[readings.len() - 2..]
        .iter()
        .map(|r| Reading {
            ts: last + WINDOW,
            id: r.id + 1_000_000,
            ..*r
        })
        .collect();
    upload(&more).await;
    close(&more).await;
    let closed_before = window(last + WINDOW) + WINDOW;
    let raw = closed_before - RETENTION;
    let horizon = raw - raw % 3600;
    for party in 0..2 {
        common::wait_for(
            60,
            "the archive to take what passed the horizon",
            async || {
                let r = retention(&cluster, party);
                let done = r["retained_from"] == horizon;
                if !done {
                    eprintln!("party {party}: {r}, waiting for {horizon}");
                }
                done.then_some(())
            },
        )
        .await;
        let r = retention(&cluster, party);
        assert!(
            r["archive"]["hours"].as_u64().unwrap() >= 4,
            "party {party}: {r}"
        );
    }
    for r in &more {
        reference.add(r);
    }
    common::assert_reveals(&cluster, &reference, GroupLevel::Plug).await;
    cluster.shutdown().await;
}

/// Decided flags in every catalog partition, as voter 0 has applied them.
async fn decided_flags(cluster: &LocalCluster) -> u64 {
    let status = common::json(
        &cluster.http(),
        &format!("{}/v1/status", cluster.catalog_urls()[0]),
    )
    .await;
    status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["flags"]["committed"].as_u64().unwrap() + p["flags"]["errored"].as_u64().unwrap()
        })
        .sum()
}

/// The catalog forgets a decided flag once every cloud that stored a bucket map confirmed it
/// no longer needs it, never before, and never a flag still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decided_flags_are_forgotten_once_every_cloud_is_done_with_them() {
    const LATE: u16 = 2;
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::cluster(
        dir.path(),
        2,
        ClusterOptions {
            catalog: mcloud::cluster::CatalogSpec {
                partitions: 2,
                keep_decided_ms: 500,
                ..Default::default()
            },
            // Party 2 is enrolled but runs no cloud: it stands for a cloud that is down.
            extra_parties: 1,
            ..Default::default()
        },
    )
    .await;
    let readings: Vec<Reading> = Synthetic::new(SyntheticConfig {
        houses: 1,
        households_per_house: 1,
        plugs_per_household: 2,
        duration_secs: 3600,
        interval_secs: 60,
        ..Default::default()
    })
    .collect();
    // Flags are forgotten only past their deadline: short ones keep the test short.
    let uploader = cluster.uploader(Duration::from_secs(5)).unwrap();
    let upload = async |part: &[Reading]| {
        let batch = PlainBatch::new(GATEWAY.sensor, part.to_vec());
        let outcome = uploader.transact(&batch, Fate::Complete).await.unwrap();
        assert_eq!(outcome, Outcome::Committed);
        batch.id
    };
    let (first, second) = readings.split_at(readings.len() / 2);
    let mut ids = Vec::new();
    for part in first.chunks(20) {
        ids.push(upload(part).await);
    }
    common::wait_for(60, "the decided flags to be forgotten", async || {
        (decided_flags(&cluster).await == 0).then_some(())
    })
    .await;
    let catalog = cluster.catalog_client().unwrap();
    let flags = catalog.get(ids.clone()).await.unwrap();
    assert!(flags.iter().all(Option::is_none), "{flags:?}");

    // A cloud that stored a map and has not said it is done holds every decided flag.
    let late = cluster.cloud_catalog_client(LATE).unwrap();
    late.put_assignment(
        LATE,
        &mcloud_catalog::Assignment {
            epoch: 1,
            owners: vec![0; 4],
        },
    )
    .await
    .unwrap();
    let mut held = Vec::new();
    for part in second.chunks(20) {
        held.push(upload(part).await);
    }
    // Past their deadline and several settled reports of the running clouds.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(decided_flags(&cluster).await, held.len() as u64);
    // A time far ahead of the catalog's clock is refused by name.
    let ahead = mcloud_core::auth::now_secs() * 1000 + 3_600_000;
    let e = late.report_settled(LATE, ahead).await.unwrap_err();
    assert!(
        e.to_string().contains("ahead of the catalog's clock"),
        "{e}"
    );
    let now = mcloud_core::auth::now_secs() * 1000;
    late.report_settled(LATE, now).await.unwrap();
    common::wait_for(60, "the held flags to be forgotten", async || {
        (decided_flags(&cluster).await == 0).then_some(())
    })
    .await;
    // Only its own cloud reports a party's time.
    let e = late.report_settled(0, now).await.unwrap_err();
    assert!(
        e.to_string().contains("not_your_cloud") || e.to_string().contains("403"),
        "{e}"
    );

    // A cloud that left for good stops holding flags once an administrator forgets it, and
    // only an administrator may.
    late.put_assignment(
        LATE,
        &mcloud_catalog::Assignment {
            epoch: 2,
            owners: vec![0; 4],
        },
    )
    .await
    .unwrap();
    let (third, _) = second.split_at(second.len() / 2);
    for part in third.chunks(20) {
        upload(part).await;
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        decided_flags(&cluster).await > 0,
        "held by the silent cloud"
    );
    let e = late.forget_cloud(LATE).await.unwrap_err().to_string();
    assert!(e.contains("403"), "a cloud may not forget one: {e}");
    cluster
        .admin_catalog_client(0)
        .unwrap()
        .forget_cloud(LATE)
        .await
        .unwrap();
    common::wait_for(
        60,
        "the flags held for the forgotten cloud to go",
        async || (decided_flags(&cluster).await == 0).then_some(()),
    )
    .await;
    cluster.shutdown().await;
}
