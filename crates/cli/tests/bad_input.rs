//! Every endpoint answers bad input with a 4xx that names the problem, and changes no state:
//! after all the bad requests, the revealed aggregates still equal the plaintext reference
//! over the good batches only.

mod common;

use common::{expect, post_raw, sensor};

use mcloud::cluster::{ClusterSpec, LocalCluster, GATEWAY};
use mcloud_catalog::FlagTable;
use mcloud_client::PlainBatch;
use mcloud_collector::{check, Query, Reference};
use mcloud_core::histogram::BUCKETS;
use mcloud_core::reading::GroupLevel;
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::upload::{explicit_party, PlainHistogram};
use mcloud_core::wire::{
    CreateFlag, CreateFlagsRequest, FlagIds, RecordMeta, Shares, UploadRequest, WatermarkRequest,
    MAX_BATCH_RECORDS,
};
use mcloud_core::{BatchId, Reading, Window};
use std::time::Duration;

async fn cluster(dir: &std::path::Path) -> LocalCluster {
    LocalCluster::start(ClusterSpec {
        parties: 3,
        window_secs: 60,
        grace_secs: 0,
        dir: dir.to_path_buf(),
    })
    .await
    .unwrap()
}

fn readings(minutes: u64) -> Vec<Reading> {
    Synthetic::new(SyntheticConfig {
        houses: 2,
        households_per_house: 1,
        plugs_per_household: 2,
        duration_secs: minutes * 60,
        interval_secs: 10,
        ..Default::default()
    })
    .collect()
}

/// A postcard call to party `party`'s cloud with the sensor's session for that party.
async fn sensor_post<R: serde::de::DeserializeOwned>(
    sessions: &mcloud_client::SensorSessions,
    http: &reqwest::Client,
    party: usize,
    url: String,
    body: Vec<u8>,
) -> Result<R, mcloud_core::http::CallError> {
    let session = sessions.header(party as u16).await?;
    let request = http.post(&url).header("authorization", session).body(body);
    mcloud_core::http::send(&url, request).await
}

/// Runs `batch`'s transaction as far as `fate` allows; it must end as `outcome`.
async fn transact(
    uploader: &mcloud_client::Uploader,
    batch: &PlainBatch,
    fate: mcloud_client::Fate,
    outcome: mcloud_client::Outcome,
) {
    assert_eq!(uploader.transact(batch, fate).await.unwrap(), outcome);
}

async fn status(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(format!("{url}/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_name_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let http = sensor(&cluster).await;
    let clouds = cluster.cloud_urls();
    let catalog = cluster.catalog_url();
    let uploader = cluster.uploader(Duration::from_secs(30)).unwrap();
    let flags = cluster.catalog_client().unwrap();
    let data = readings(3);
    let (first, second) = data.split_at(data.len() / 2);

    // One good batch, fully committed.
    let good = PlainBatch::new(GATEWAY.sensor, first.to_vec());
    let outcome = uploader
        .transact(&good, mcloud_client::Fate::Complete)
        .await
        .unwrap();
    assert_eq!(outcome, mcloud_client::Outcome::Committed);
    let mut before = Vec::new();
    for cloud in &clouds {
        before.push(status(&http.http, cloud).await);
    }

    // Malformed bodies.
    let upload = format!("{}/v1/upload", clouds[0]);
    expect(
        post_raw(&http, &upload, b"not postcard".to_vec()).await,
        400,
        "malformed body",
    );
    expect(
        post_raw(&http, &format!("{catalog}/v1/flags/create"), vec![0xff; 3]).await,
        400,
        "malformed body",
    );
    expect(
        post_raw(&http, &format!("{catalog}/v1/flags/set"), vec![]).await,
        400,
        "malformed body",
    );

    // A batch whose shares do not fit this deployment, with one histogram.
    let plug = second[0].group;
    let histogram = PlainHistogram {
        plug,
        window_start: Window::containing(second[0].ts, 30).start,
        counts: vec![1; BUCKETS],
    };
    let bad = PlainBatch::with_histograms(GATEWAY.sensor, second.to_vec(), vec![histogram]);
    flags
        .create(vec![CreateFlag {
            id: bad.id,
            ttl_ms: 30_000,
            robust: false,
        }])
        .await
        .unwrap();
    let bodies = uploader.encode_shares(&bad).unwrap();
    let decoded = |party: usize| -> UploadRequest { postcard::from_bytes(&bodies[party]).unwrap() };
    let batch = decoded(0);
    let mut wrong = batch.clone();
    wrong.parties = 2;
    expect(
        post_raw(&http, &upload, postcard::to_stdvec(&wrong).unwrap()).await,
        400,
        "split into 2 shares, but this deployment has 3 clouds",
    );
    // cloud 1's share sent to cloud 0
    expect(
        post_raw(&http, &upload, bodies[1].clone()).await,
        400,
        "carries the share for cloud 1",
    );
    let mut empty = batch.clone();
    empty.records.clear();
    empty.histograms.clear();
    expect(
        post_raw(&http, &upload, postcard::to_stdvec(&empty).unwrap()).await,
        400,
        "empty batch",
    );
    let mut twice = batch.clone();
    twice.records.push(twice.records[0]);
    expect(
        post_raw(&http, &upload, postcard::to_stdvec(&twice).unwrap()).await,
        400,
        "appears twice",
    );
    let mut future = batch.clone();
    future.records[0].ts = u64::MAX / 2;
    expect(
        post_raw(&http, &upload, postcard::to_stdvec(&future).unwrap()).await,
        400,
        "in the future",
    );
    let mut oversized = batch.clone();
    let record = oversized.records[0];
    oversized.records = (0..MAX_BATCH_RECORDS as u64 + 1)
        .map(|k| RecordMeta { key: k, ..record })
        .collect();
    let oversized = postcard::to_stdvec(&oversized).unwrap();
    expect(post_raw(&http, &upload, oversized).await, 413, "limit");
    expect(
        post_raw(&http, &upload, vec![0; 9 << 20]).await,
        413,
        "larger than the limit",
    );

    // Shares that do not fit the metadata, or disagree on which party receives them
    // explicitly (the batch id mod 3): each refused by the cloud it is sent to.
    let explicit = usize::from(explicit_party(bad.id, 3));
    let seed_party = (explicit + 1) % 3;
    let upload_to = |party: usize| format!("{}/v1/upload", clouds[party]);
    let explicit_body = decoded(explicit);
    let Shares::Explicit {
        records: record_shares,
        histograms: count_shares,
    } = explicit_body.shares.clone()
    else {
        panic!("cloud {explicit} receives explicit shares");
    };
    let Shares::Seed(seed) = decoded(seed_party).shares else {
        panic!("cloud {seed_party} receives a seed");
    };
    let misfits = [
        (
            Shares::Explicit {
                records: record_shares[1..].to_vec(),
                histograms: count_shares.clone(),
            },
            format!(
                "{} record shares for {} records",
                record_shares.len() - 1,
                record_shares.len()
            ),
        ),
        (
            Shares::Explicit {
                records: [&record_shares[..], &record_shares[..1]].concat(),
                histograms: count_shares.clone(),
            },
            format!(
                "{} record shares for {} records",
                record_shares.len() + 1,
                record_shares.len()
            ),
        ),
        (
            Shares::Explicit {
                records: record_shares.clone(),
                histograms: count_shares[1..].to_vec(),
            },
            format!("{} histogram counts for 1 histograms", BUCKETS - 1),
        ),
        (
            Shares::Seed(seed),
            "is this batch's explicit party".to_string(),
        ),
    ];
    for (shares, words) in misfits {
        let body = UploadRequest {
            shares,
            ..explicit_body.clone()
        };
        expect(
            post_raw(
                &http,
                &upload_to(explicit),
                postcard::to_stdvec(&body).unwrap(),
            )
            .await,
            400,
            &words,
        );
    }
    let explicit_at_seed_party = UploadRequest {
        party: seed_party as u16,
        ..explicit_body.clone()
    };
    expect(
        post_raw(
            &http,
            &upload_to(seed_party),
            postcard::to_stdvec(&explicit_at_seed_party).unwrap(),
        )
        .await,
        400,
        &format!("receives a seed for this batch (its explicit party is cloud {explicit}"),
    );
    let mut histogram_twice = decoded(seed_party);
    histogram_twice
        .histograms
        .push(histogram_twice.histograms[0]);
    expect(
        post_raw(
            &http,
            &upload_to(seed_party),
            postcard::to_stdvec(&histogram_twice).unwrap(),
        )
        .await,
        400,
        "appears twice",
    );
    // A histogram window in the year 2100, and one whose end would wrap past u64::MAX.
    for start in [4_102_444_800, u64::MAX - 15] {
        let mut far = decoded(seed_party);
        far.histograms[0].window_start = start;
        expect(
            post_raw(
                &http,
                &upload_to(seed_party),
                postcard::to_stdvec(&far).unwrap(),
            )
            .await,
            400,
            &format!("window start {start} is more than"),
        );
    }

    // Unknown flag: shares uploaded without CREATE.
    let unknown = PlainBatch::new(GATEWAY.sensor, second.to_vec());
    expect(
        post_raw(
            &http,
            &upload,
            uploader.encode_shares(&unknown).unwrap().remove(0),
        )
        .await,
        404,
        "unknown flag",
    );
    expect(
        post_raw(
            &http,
            &format!("{catalog}/v1/flags/set"),
            postcard::to_stdvec(&FlagIds {
                ids: vec![unknown.id],
            })
            .unwrap(),
        )
        .await,
        404,
        "unknown flag",
    );
    // Out-of-range deadline.
    expect(
        post_raw(
            &http,
            &format!("{catalog}/v1/flags/create"),
            postcard::to_stdvec(&CreateFlagsRequest {
                flags: vec![CreateFlag {
                    id: BatchId::of_sensor(GATEWAY.sensor),
                    ttl_ms: 0,
                    robust: false,
                }],
            })
            .unwrap(),
        )
        .await,
        400,
        "is out of range 1..=",
    );

    // SET after the deadline.
    let late = PlainBatch::new(GATEWAY.sensor, second.to_vec());
    flags
        .create(vec![CreateFlag {
            id: late.id,
            ttl_ms: 1,
            robust: false,
        }])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    expect(
        post_raw(
            &http,
            &format!("{catalog}/v1/flags/set"),
            postcard::to_stdvec(&FlagIds { ids: vec![late.id] }).unwrap(),
        )
        .await,
        409,
        "missed its deadline",
    );
    // Uploading a batch whose flag already ended ERROR (once the catalog says so: the
    // replicated catalog decides ERROR through its log, a moment after the deadline).
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while flags.get(vec![late.id]).await.unwrap()[0].map(|f| f.state)
        != Some(mcloud_core::wire::FlagState::Error)
    {
        assert!(
            std::time::Instant::now() < until,
            "the expired flag never became ERROR"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late_body = uploader.encode_shares(&late).unwrap().remove(0);
    expect(
        post_raw(&http, &upload, late_body).await,
        409,
        "already ERROR",
    );

    // A bad COMPUTE query.
    let app = cluster.app_client(&cluster.app_token().unwrap()).unwrap();
    let r = app
        .get(format!("{}/v1/compute?level=street", clouds[0]))
        .send()
        .await
        .unwrap();
    expect(
        (r.status().as_u16(), r.text().await.unwrap()),
        400,
        "bad COMPUTE query",
    );

    // Nothing above changed any state, at any cloud.
    let mut after = Vec::new();
    for (cloud, before) in clouds.iter().zip(&before) {
        let now = status(&http.http, cloud).await;
        for field in ["batches", "windows"] {
            assert_eq!(before[field], now[field], "{cloud}: {before} vs {now}");
        }
        after.push(now);
    }
    let after = &after[0];

    // A share for a window that already closed.
    uploader
        .advance_watermark(first.last().unwrap().ts, true)
        .await
        .unwrap();
    let early: Vec<Reading> = first
        .iter()
        .take(5)
        .map(|r| Reading {
            id: r.id + 1_000_000,
            ..*r
        })
        .collect();
    let closed = PlainBatch::new(GATEWAY.sensor, early);
    flags
        .create(vec![CreateFlag {
            id: closed.id,
            ttl_ms: 30_000,
            robust: false,
        }])
        .await
        .unwrap();
    let body = uploader.encode_shares(&closed).unwrap().remove(0);
    expect(
        post_raw(&http, &upload, body).await,
        410,
        "after the window closed",
    );
    assert_eq!(
        after["batches"],
        status(&http.http, &clouds[0]).await["batches"]
    );

    // The good batch alone is revealed, exactly.
    let query = Query {
        from: 0,
        to: u64::MAX,
        level: GroupLevel::Plug,
        min_count: 1,
    };
    let revealed = cluster
        .collector()
        .unwrap()
        .collect_when_ready(&query, Duration::from_secs(10))
        .await
        .unwrap();
    let mut reference = Reference::new(60, GroupLevel::Plug);
    let closed_until = mcloud_core::Window::containing(first.last().unwrap().ts, 60).end;
    for r in first {
        reference.add(r);
    }
    let revealed_closed = mcloud_collector::RevealedResult {
        windows: revealed
            .windows
            .into_iter()
            .filter(|w| w.window.end <= closed_until)
            .collect(),
        not_ready: vec![],
        implausible: vec![],
    };
    let report = check(&revealed_closed, &reference, 1);
    assert!(report.ok(), "{:?}", report.problems);
    assert!(report.matched > 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_duplicates_and_replays_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let http = sensor(&cluster).await;
    let uploader = cluster.uploader(Duration::from_secs(30)).unwrap();
    let data = readings(2);
    let batch = PlainBatch::new(GATEWAY.sensor, data.clone());
    // The whole transaction twice (a sensor that lost the first answers), then each step again.
    for _ in 0..2 {
        assert_eq!(
            uploader
                .transact(&batch, mcloud_client::Fate::Complete)
                .await
                .unwrap(),
            mcloud_client::Outcome::Committed
        );
    }
    let bodies = uploader.encode_shares(&batch).unwrap();
    let sessions = mcloud_client::SensorSessions::new(
        cluster.sensor_credentials(GATEWAY),
        cluster.cloud_endpoints().unwrap(),
    );
    for (party, (cloud, body)) in cluster.cloud_urls().iter().zip(&bodies).enumerate() {
        let answer: Result<mcloud_core::wire::UploadAck, _> = sensor_post(
            &sessions,
            &cluster.http(),
            party,
            format!("{cloud}/v1/upload"),
            body.clone(),
        )
        .await;
        assert!(answer.is_ok(), "{answer:?}");
    }
    // A replayed SET is acknowledged and changes nothing.
    let replay = post_raw(
        &http,
        &format!("{}/v1/flags/set", cluster.catalog_url()),
        postcard::to_stdvec(&FlagIds {
            ids: vec![batch.id],
        })
        .unwrap(),
    )
    .await;
    assert_eq!(replay.0, 200);
    // The same batch id with different shares is a duplicate too: the first version stands.
    let other = PlainBatch {
        id: batch.id,
        ..batch.rekeyed()
    };
    let sessions = mcloud_client::SensorSessions::new(
        cluster.sensor_credentials(GATEWAY),
        cluster.cloud_endpoints().unwrap(),
    );
    let http = cluster.http();
    for (party, (cloud, body)) in cluster
        .cloud_urls()
        .iter()
        .zip(uploader.encode_shares(&other).unwrap())
        .enumerate()
    {
        let answer: mcloud_core::wire::UploadAck =
            sensor_post(&sessions, &http, party, format!("{cloud}/v1/upload"), body)
                .await
                .unwrap();
        assert!(answer.duplicate);
    }
    let last = data.iter().map(|r| r.ts).max().unwrap();
    for (party, cloud) in cluster.cloud_urls().iter().enumerate() {
        let body = postcard::to_stdvec(&WatermarkRequest {
            ts: last,
            end_of_stream: true,
        })
        .unwrap();
        let _: u64 = sensor_post(
            &sessions,
            &http,
            party,
            format!("{cloud}/v1/watermark"),
            body,
        )
        .await
        .unwrap();
    }
    let query = Query {
        from: 0,
        to: u64::MAX,
        level: GroupLevel::House,
        min_count: 1,
    };
    let revealed = cluster
        .collector()
        .unwrap()
        .collect_when_ready(&query, Duration::from_secs(10))
        .await
        .unwrap();
    let mut reference = Reference::new(60, GroupLevel::House);
    data.iter().for_each(|r| reference.add(r));
    let report = check(&revealed, &reference, 1);
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(revealed.windows.iter().map(|w| w.batches).max(), Some(1));
    cluster.shutdown().await;
}

/// A sensor that hangs up in the middle of an upload (a crash, a lost link) drops the cloud's
/// request while the batch is being stored. The cloud still finishes storing it: the
/// sensor's retry is recognised as a duplicate, the transaction commits, and its windows are
/// revealed. Cut short with the request, the batch stayed claimed forever, and every window
/// it touched waited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_short_by_its_sensor_is_stored_whole() {
    use std::future::Future;
    use std::task::Poll;
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let uploader = cluster.uploader(Duration::from_secs(30)).unwrap();
    let data = readings(3);
    let batch = PlainBatch::new(GATEWAY.sensor, data.clone());
    // The flag, with nothing uploaded under it yet.
    transact(
        &uploader,
        &batch,
        mcloud_client::Fate::DieAfter(0),
        mcloud_client::Outcome::Crashed,
    )
    .await;
    let node = cluster.cloud(0).unwrap();
    let body = uploader.encode_shares(&batch).unwrap().remove(0);
    let claimed = |node: &mcloud_cloud::CloudNode| node.status()["batches"].as_u64() == Some(1);
    let scope = GATEWAY;
    let mut upload = Box::pin(node.upload(body.into(), &scope));
    // Driven until the cloud has claimed the batch, then dropped as a closed connection
    // drops it.
    while !claimed(&node) {
        let polled = std::future::poll_fn(|cx| Poll::Ready(upload.as_mut().poll(cx))).await;
        assert!(
            polled.is_pending(),
            "the upload ended before it was cut short: {:?}",
            polled.map(|r| r.map_err(|e| e.to_string()))
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(upload);

    transact(
        &uploader,
        &batch,
        mcloud_client::Fate::Complete,
        mcloud_client::Outcome::Committed,
    )
    .await;
    uploader
        .advance_watermark(data.iter().map(|r| r.ts).max().unwrap(), true)
        .await
        .unwrap();
    let mut reference = Reference::new(60, GroupLevel::House);
    data.iter().for_each(|r| reference.add(r));
    common::assert_reveals(&cluster, &reference, GroupLevel::House).await;
    cluster.shutdown().await;
}

/// One committed batch whose count shares add up to 2^100 + 1 (a broken or malicious sensor:
/// the clouds check the shape of shares, not their values) is withheld with its group alone
/// and reported by name; every other group is revealed and equals the reference. Before,
/// every later query failed as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_implausible_group_is_withheld_alone_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let uploader = cluster.uploader(Duration::from_secs(30)).unwrap();
    let data = readings(3);
    let good = PlainBatch::new(GATEWAY.sensor, data.clone());
    transact(
        &uploader,
        &good,
        mcloud_client::Fate::Complete,
        mcloud_client::Outcome::Committed,
    )
    .await;
    // One reading of a house the good batch does not have, in its first window.
    let bad = PlainBatch::new(
        GATEWAY.sensor,
        vec![Reading {
            id: 1 << 40,
            group: mcloud_core::GroupKey {
                house: 9,
                household: 0,
                plug: 0,
            },
            ..data[0]
        }],
    );
    transact(
        &uploader,
        &bad,
        mcloud_client::Fate::DieAfter(0),
        mcloud_client::Outcome::Crashed,
    )
    .await;
    let mut bodies = uploader.encode_shares(&bad).unwrap();
    let explicit = usize::from(explicit_party(bad.id, 3));
    let mut body: UploadRequest = postcard::from_bytes(&bodies[explicit]).unwrap();
    let Shares::Explicit { records, .. } = &mut body.shares else {
        panic!("cloud {explicit} receives explicit shares");
    };
    records[0][2] += mcloud_core::Field::from(1u128 << 100);
    bodies[explicit] = postcard::to_stdvec(&body).unwrap();
    let sessions = mcloud_client::SensorSessions::new(
        cluster.sensor_credentials(GATEWAY),
        cluster.cloud_endpoints().unwrap(),
    );
    for (party, (cloud, body)) in cluster.cloud_urls().iter().zip(bodies).enumerate() {
        let ack: mcloud_core::wire::UploadAck = sensor_post(
            &sessions,
            &cluster.http(),
            party,
            format!("{cloud}/v1/upload"),
            body,
        )
        .await
        .unwrap();
        assert!(!ack.duplicate);
    }
    cluster
        .catalog_client()
        .unwrap()
        .set(vec![bad.id])
        .await
        .unwrap();
    uploader
        .advance_watermark(data.iter().map(|r| r.ts).max().unwrap(), true)
        .await
        .unwrap();

    for level in [GroupLevel::House, GroupLevel::Plug] {
        let revealed = cluster
            .collector()
            .unwrap()
            .collect_when_ready(
                &Query {
                    from: 0,
                    to: u64::MAX,
                    level,
                    min_count: 1,
                },
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        assert!(revealed.not_ready.is_empty(), "{:?}", revealed.not_ready);
        let [withheld] = &revealed.implausible[..] else {
            panic!("one group withheld: {:?}", revealed.implausible);
        };
        assert_eq!(withheld.group.house, 9);
        assert_eq!(withheld.error.code(), "implausible_count");
        assert!(withheld.window.start <= data[0].ts && data[0].ts < withheld.window.end);
        let mut reference = Reference::new(60, level);
        data.iter().for_each(|r| reference.add(r));
        let report = check(&revealed, &reference, 1);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].contains("implausible_count"));
        assert_eq!(report.matched, reference.groups().count() as u64);
    }
    cluster.shutdown().await;
}
