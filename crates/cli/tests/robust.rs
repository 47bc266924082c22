//! Robust mode end to end, over real TLS between real cloud nodes: valid reports reveal exactly
//! the plaintext reference (also after a cloud restarts), and every kind of invalid report is
//! refused at every cloud, its flag ends ERROR, the refusal is counted against its sensor, and
//! nothing of it counts.

mod common;

use mcloud::cluster::{ClusterOptions, ClusterSpec, LocalCluster, GATEWAY};
use mcloud_catalog::FlagTable;
use mcloud_client::{Fate, Outcome, PlainBatch, PlainHistogram};
use mcloud_collector::Reference;
use mcloud_core::auth::sensor::SensorScope;
use mcloud_core::reading::GroupLevel;
use mcloud_core::robust::Forgery;
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::wire::FlagState;
use mcloud_core::Reading;
use std::time::Duration;

const WINDOW: u64 = 60;
const CLOUDS: u16 = 3;

async fn robust_cluster(dir: &std::path::Path) -> LocalCluster {
    LocalCluster::start_with(
        ClusterSpec {
            parties: CLOUDS,
            window_secs: WINDOW,
            grace_secs: WINDOW,
            dir: dir.to_path_buf(),
        },
        ClusterOptions {
            robust: true,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// 20 minutes of 2 houses of 3 plugs, a reading every 10 s.
fn readings() -> Vec<Reading> {
    Synthetic::new(SyntheticConfig {
        houses: 2,
        households_per_house: 1,
        plugs_per_household: 3,
        duration_secs: 20 * 60,
        interval_secs: 10,
        ..Default::default()
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_reports_reveal_the_reference_and_every_forgery_is_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = robust_cluster(dir.path()).await;
    let ttl = Duration::from_secs(10);
    let readings = readings();
    let mut reference = Reference::new(WINDOW, GroupLevel::Plug);
    readings.iter().for_each(|r| reference.add(r));

    let honest = cluster.uploader(ttl).unwrap();
    assert!(honest.is_robust());
    let batches: Vec<PlainBatch> = readings
        .chunks(100)
        .map(|c| PlainBatch::new(GATEWAY.sensor, c.to_vec()))
        .collect();
    for batch in &batches {
        let outcome = honest.transact(batch, Fate::Complete).await.unwrap();
        assert_eq!(outcome, Outcome::Committed);
    }
    // A batch sent again (a retry after a lost answer) is acknowledged and counts once.
    let again = honest.transact(&batches[0], Fate::Complete).await.unwrap();
    assert_eq!(again, Outcome::Committed);

    // Each forging sensor sends readings that would change every group they touch.
    let catalog = cluster.cloud_catalog_client(0).unwrap();
    for (i, forgery) in Forgery::ALL.into_iter().enumerate() {
        let scope = SensorScope {
            sensor: 100 + i as u32,
            house: None,
            plugs: None,
        };
        let forger = cluster
            .uploader_for(scope.clone(), ttl)
            .unwrap()
            .robust(Some(forgery))
            .unwrap();
        let forged: Vec<Reading> = readings[..40]
            .iter()
            .map(|r| Reading {
                value: r.value + 1_000,
                ..*r
            })
            .collect();
        let histogram = PlainHistogram {
            plug: forged[0].group,
            window_start: forged[0].ts - forged[0].ts % 30,
            counts: {
                let mut c = vec![0; mcloud_core::histogram::BUCKETS];
                c[5] = 3;
                c
            },
        };
        let batch = PlainBatch::with_histograms(scope.sensor, forged, vec![histogram]);
        let outcome = forger.transact(&batch, Fate::Complete).await.unwrap();
        let Outcome::Rejected(reason) = &outcome else {
            panic!("{forgery:?}: {outcome:?}");
        };
        assert!(
            reason.contains("robust verification refused"),
            "{forgery:?}: {reason}"
        );
        let flag = catalog.get(vec![batch.id]).await.unwrap()[0].unwrap();
        assert_eq!(flag.state, FlagState::Error, "{forgery:?}");
        for party in 0..CLOUDS {
            let node = cluster.cloud(party).unwrap();
            assert_eq!(
                node.refused_batches(scope.sensor),
                1,
                "{forgery:?} at cloud {party}"
            );
            assert_eq!(
                node.status()["robust"]["pending_batches"],
                0,
                "{forgery:?} at cloud {party}"
            );
        }
    }
    // Every cloud's metrics count the refusals.
    let metrics = cluster
        .http()
        .get(format!("{}/metrics", cluster.cloud_urls()[2]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = format!(
        "mcloud_cloud_batches_total{{outcome=\"refused\"}} {}",
        Forgery::ALL.len()
    );
    assert!(metrics.contains(&refused), "{refused} not in:\n{metrics}");
    assert_eq!(cluster.cloud(0).unwrap().refused_batches(GATEWAY.sensor), 0);

    // A cloud restarted from disk reads its verified batches back as any stored batch.
    cluster.restart_cloud(1).await.unwrap();
    let last = readings.iter().map(|r| r.ts).max().unwrap();
    honest.advance_watermark(last, true).await.unwrap();
    common::assert_reveals(&cluster, &reference, GroupLevel::Plug).await;
    cluster.shutdown().await;
}

/// A robust deployment takes robust reports only: a plain upload is refused before anything
/// is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robust_deployment_refuses_plain_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = robust_cluster(dir.path()).await;
    let plain = mcloud_client::Uploader::new(
        cluster.cloud_endpoints().unwrap(),
        cluster.catalog_client().unwrap(),
        cluster.catalog_parties(),
        cluster.sensor_credentials(GATEWAY),
        Duration::from_secs(5),
    );
    let batch = PlainBatch::new(GATEWAY.sensor, readings()[..10].to_vec());
    let outcome = plain.transact(&batch, Fate::Complete).await.unwrap();
    let Outcome::Rejected(reason) = outcome else {
        panic!("{outcome:?}");
    };
    assert!(reason.contains("robust_deployment"), "{reason}");
    for party in 0..CLOUDS {
        let status = cluster.cloud(party).unwrap().status();
        assert_eq!(status["batches"], 0, "cloud {party}: {status}");
    }
    cluster.shutdown().await;
}

/// Hand-made robust requests that no honest sensor sends: each refused by name, and none
/// leaves anything behind at any cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_robust_requests_are_refused_by_name_and_change_nothing() {
    use common::{expect, post_raw};
    use mcloud_core::paths::{
        CREATE_PATH, PEER_FINISH_PATH, ROBUST_SETTLE_PATH, ROBUST_UPLOAD_PATH, SET_PATH,
    };
    use mcloud_core::robust::{party_of, Finish, FinishRequest, Robust, SettleRequest};
    use mcloud_core::wire::{CreateFlag, CreateFlagsRequest, FlagIds};
    let dir = tempfile::tempdir().unwrap();
    let cluster = robust_cluster(dir.path()).await;
    let sensor = common::sensor(&cluster).await;
    let clouds = cluster.cloud_urls();
    let catalog = cluster.catalog_url();
    let robust = Robust::new(CLOUDS).unwrap();
    let create = |id, robust| {
        postcard::to_stdvec(&CreateFlagsRequest {
            flags: vec![CreateFlag {
                id,
                ttl_ms: 30_000,
                robust,
            }],
        })
        .unwrap()
    };
    let readings = readings()[..5].to_vec();
    let batch = PlainBatch::new(GATEWAY.sensor, readings.clone());
    let id = batch.id;
    expect(
        post_raw(
            &sensor,
            &format!("{catalog}{CREATE_PATH}"),
            create(id, true),
        )
        .await,
        200,
        "",
    );
    // The sensor cannot decide its robust flag itself.
    let set = postcard::to_stdvec(&FlagIds { ids: vec![id] }).unwrap();
    expect(
        post_raw(&sensor, &format!("{catalog}{SET_PATH}"), set).await,
        403,
        "its clouds set it once they verified its reports",
    );
    let bodies = robust.shard_batch(id, &readings, &[], None).unwrap();
    let leader = party_of(id, 0, CLOUDS) as usize;
    let upload = |party: usize| format!("{}{ROBUST_UPLOAD_PATH}", clouds[party]);
    // A report cut short, and reports missing.
    let mut cut = bodies[leader].clone();
    cut.record_reports[2].input_share.pop();
    expect(
        post_raw(&sensor, &upload(leader), postcard::to_stdvec(&cut).unwrap()).await,
        400,
        "record report 2 is malformed",
    );
    let mut short = bodies[leader].clone();
    short.record_reports.pop();
    expect(
        post_raw(
            &sensor,
            &upload(leader),
            postcard::to_stdvec(&short).unwrap(),
        )
        .await,
        400,
        "5 records but 4 record reports",
    );
    // Robust reports under a plain batch's flag.
    let plain = PlainBatch::new(GATEWAY.sensor, readings.clone());
    expect(
        post_raw(
            &sensor,
            &format!("{catalog}{CREATE_PATH}"),
            create(plain.id, false),
        )
        .await,
        200,
        "",
    );
    let plain_bodies = robust.shard_batch(plain.id, &readings, &[], None).unwrap();
    expect(
        post_raw(
            &sensor,
            &upload(0),
            postcard::to_stdvec(&plain_bodies[0]).unwrap(),
        )
        .await,
        400,
        "plain batch's",
    );
    // Settling anywhere but at the batch's leader, and finishing as if a cloud.
    let settle = postcard::to_stdvec(&SettleRequest { batch_id: id }).unwrap();
    let other = (leader + 1) % CLOUDS as usize;
    expect(
        post_raw(
            &sensor,
            &format!("{}{ROBUST_SETTLE_PATH}", clouds[other]),
            settle.clone(),
        )
        .await,
        421,
        "not_the_leader",
    );
    let finish = postcard::to_stdvec(&FinishRequest {
        batch_id: id,
        finish: Finish::Reject("a sensor posing as the leader".into()),
    })
    .unwrap();
    let (status, _) = post_raw(
        &sensor,
        &format!("{}{PEER_FINISH_PATH}", clouds[other]),
        finish,
    )
    .await;
    assert!(
        status == 401 || status == 403,
        "a sensor reached a cloud-only endpoint: {status}"
    );
    // Nor may a sensor give the catalog the verdict on its own robust flag.
    let verdict = postcard::to_stdvec(&mcloud_core::wire::VerdictRequest {
        ids: vec![id],
        valid: true,
    })
    .unwrap();
    let (status, text) = post_raw(
        &sensor,
        &format!("{catalog}{}", mcloud_core::paths::VERDICT_PATH),
        verdict,
    )
    .await;
    assert!(
        status == 401 || status == 403,
        "a sensor gave a verdict: {status} {text}"
    );
    for party in 0..CLOUDS {
        let status = cluster.cloud(party).unwrap().status();
        assert_eq!(status["batches"], 0, "cloud {party}: {status}");
        assert_eq!(
            status["robust"]["pending_batches"], 0,
            "cloud {party}: {status}"
        );
    }
    // The same batch, sent whole, verifies and commits.
    for (party, body) in bodies.iter().enumerate() {
        expect(
            post_raw(&sensor, &upload(party), postcard::to_stdvec(body).unwrap()).await,
            200,
            "",
        );
    }
    expect(
        post_raw(
            &sensor,
            &format!("{}{ROBUST_SETTLE_PATH}", clouds[leader]),
            settle,
        )
        .await,
        200,
        "",
    );
    let flag = cluster
        .cloud_catalog_client(0)
        .unwrap()
        .get(vec![id])
        .await
        .unwrap()[0]
        .unwrap();
    assert_eq!(flag.state, FlagState::True);
    cluster.shutdown().await;
}
