//! The DEBS 2014 queries on the private pipeline: the clouds' RANGE sums equal the plaintext
//! windows' sums, Q1 equals the plaintext reference, and Q2 agrees with the exact query.

mod common;

use mcloud::cluster::{ClusterOptions, ClusterSpec, LocalCluster};
use mcloud::demo::houses_of;
use mcloud::demo::{run_pipeline, PipelineArgs};
use mcloud::queries::{run_queries, EmitArg, QueryKind};
use mcloud_analytics::{
    q1_mismatches, q2_agreement, run_reference, windows_from_readings, AggregateSource, Emit,
    MemorySource, RunOptions,
};
use mcloud_collector::{CloudSource, Query};
use mcloud_core::reading::GroupLevel;
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::wire::RangeSpec;
use mcloud_core::{Metric, Reading};
use std::sync::Arc;
use std::time::Duration;

/// Small batches, so that a short input still spreads over many batches.
fn small_batches() -> PipelineArgs {
    PipelineArgs {
        batch_size: 300,
        in_flight: 4,
        ttl_ms: 2000,
        speedup: None,
        histograms: true,
    }
}

async fn uploaded(
    readings: &[Reading],
    dir: &std::path::Path,
    pipeline: &PipelineArgs,
) -> LocalCluster {
    uploaded_with(readings, dir, pipeline, ClusterOptions::default()).await
}

async fn uploaded_with(
    readings: &[Reading],
    dir: &std::path::Path,
    pipeline: &PipelineArgs,
    options: ClusterOptions,
) -> LocalCluster {
    let cluster = LocalCluster::start_with(
        ClusterSpec {
            parties: 3,
            window_secs: 30,
            grace_secs: 60,
            dir: dir.to_path_buf(),
        },
        options,
    )
    .await
    .unwrap();
    let query = Query {
        from: 0,
        to: u64::MAX,
        level: GroupLevel::Plug,
        min_count: 1,
    };
    let run = run_pipeline(&cluster, readings, pipeline, &query, 0.0, 1, false)
        .await
        .unwrap();
    assert!(run.check.ok(), "{:?}", run.check.problems);
    let refused: Vec<&String> = (run.report.rejected.iter())
        .chain(&run.report.missed)
        .map(|u| &u.reason)
        .collect();
    assert!(
        refused.is_empty(),
        "{} batches refused: {:?}",
        refused.len(),
        refused.first()
    );
    cluster
}

fn synthetic(hours: u64, interval: u64) -> Vec<Reading> {
    house_of(2, 3, hours, interval)
}

/// `houses` houses of `plugs` plugs each (one household), reading every `interval` seconds.
fn house_of(houses: u32, plugs: u32, hours: u64, interval: u64) -> Vec<Reading> {
    Synthetic::new(SyntheticConfig {
        houses,
        households_per_house: 1,
        plugs_per_household: plugs,
        duration_secs: hours * 3600,
        interval_secs: interval,
        ..Default::default()
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_ranges_equal_plaintext_window_sums() {
    let readings = synthetic(3, 10);
    let dir = tempfile::tempdir().unwrap();
    let cluster = uploaded(&readings, dir.path(), &small_batches()).await;
    let start = readings[0].ts - readings[0].ts % 30;
    let ranges = [
        (start, start + 3600),
        (start + 30, start + 3630),
        (start + 60, start + 3660),
        (start, start + 7200),
        (start + 1800, start + 1860),
        (start + 3600, start + 3 * 3600),
    ];
    let collector = Arc::new(cluster.collector().unwrap());
    let runtime = tokio::runtime::Handle::current();
    let mut memory = MemorySource::new(windows_from_readings(&readings)).unwrap();
    let (sums, hists) = tokio::task::spawn_blocking(move || {
        let mut cloud = CloudSource::new(collector, runtime);
        let mut sums = Vec::new();
        let mut hists = Vec::new();
        for (from, to) in ranges {
            sums.push((
                cloud.count_sum(from, to).unwrap(),
                memory.count_sum(from, to).unwrap(),
            ));
            if to - from >= 3600 {
                hists.push((
                    cloud.histograms(from, to).unwrap(),
                    memory.histograms(from, to).unwrap(),
                ));
            }
        }
        (sums, hists)
    })
    .await
    .unwrap();
    for (i, (cloud, plain)) in sums.iter().enumerate() {
        assert_eq!(cloud, plain, "count/sum of range {:?}", ranges[i]);
    }
    for (cloud, plain) in &hists {
        assert_eq!(cloud, plain);
    }
    // More ranges than a cloud takes in one request: refused as too large, asked again in
    // halves, answered exactly as one by one.
    let collector = cluster.collector().unwrap();
    let many: Vec<RangeSpec> = (0..1500)
        .map(|i| {
            let (from, to) = ranges[i % ranges.len()];
            RangeSpec {
                from,
                to,
                histograms: false,
            }
        })
        .collect();
    let together = collector.ranges(&many).await.unwrap();
    assert_eq!(together.len(), many.len());
    for (spec, answer) in many.iter().zip(&together).take(ranges.len()) {
        assert_eq!(answer, &collector.range(*spec).await.unwrap());
    }
    cluster.shutdown().await;
}

/// Runs both queries on the uploaded `readings`: Q1 equals the reference, Q2 agrees on at
/// least 99 % of rows.
async fn q1_exact_and_q2_agreeing(cluster: &LocalCluster, readings: &[Reading]) {
    let run = run_queries(cluster, readings, QueryKind::All, EmitArg::Every)
        .await
        .unwrap();
    assert!(
        run.q1_problems.is_empty(),
        "{:?}",
        &run.q1_problems[..run.q1_problems.len().min(5)]
    );
    assert!(!run.private.q1.is_empty());
    println!(
        "Q2 agreement {}/{} = {:.4}",
        run.q2_identical,
        run.q2_total,
        run.q2_ratio()
    );
    assert!(run.q2_ratio() >= 0.99, "Q2 agreement {}", run.q2_ratio());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q1_is_exact_and_q2_agrees_on_multi_day_data() {
    // Just over a day: Q1 gets a day of history and Q2 full 24 h windows.
    let readings = synthetic(26, 60);
    let dir = tempfile::tempdir().unwrap();
    let cluster = uploaded(&readings, dir.path(), &small_batches()).await;
    q1_exact_and_q2_agreeing(&cluster, &readings).await;
    cluster.shutdown().await;
}

/// The collector runs beside the sensor, as `mcloud analytics --wait-secs` does: a range that
/// reaches a window not closed yet is refused with the stable code `window_not_ready`, and a
/// source that waits asks again until it closes. What it computes while the upload runs equals
/// the plaintext reference and what the queries give after the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queries_follow_a_stream_while_it_is_uploaded() {
    let readings = synthetic(3, 10);
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(ClusterSpec {
        parties: 3,
        window_secs: 30,
        grace_secs: 60,
        dir: dir.path().to_path_buf(),
    })
    .await
    .unwrap();
    let owner = cluster.owner_token(houses_of(&readings)).unwrap();
    let collector = Arc::new(cluster.collector_as(&owner).unwrap());
    let loads = readings.iter().filter(|r| r.metric == Metric::Load);
    let first = loads.clone().map(|r| r.ts).min().unwrap();
    let last = loads.map(|r| r.ts).max().unwrap();
    let start = first - first % 30;
    let refused = collector
        .range(RangeSpec {
            from: start,
            to: start + 60,
            histograms: false,
        })
        .await
        .unwrap_err();
    assert!(refused.is_not_ready(), "{refused}");

    let options = RunOptions {
        q1: true,
        q2: true,
        emit: Emit::Every,
    };
    let runtime = tokio::runtime::Handle::current();
    let following = tokio::task::spawn_blocking(move || {
        let mut source = CloudSource::new(collector, runtime).waiting(Duration::from_secs(120));
        mcloud_analytics::run(&mut source, first, last, options)
    });
    let query = Query {
        from: 0,
        to: u64::MAX,
        level: GroupLevel::House,
        min_count: 1,
    };
    let run = run_pipeline(&cluster, &readings, &small_batches(), &query, 0.0, 1, false)
        .await
        .unwrap();
    assert!(run.check.ok(), "{:?}", run.check.problems);
    let followed = following.await.unwrap().unwrap();
    assert!(!followed.q1.is_empty() && !followed.q2.is_empty());
    let reference = run_reference(&readings, options);
    let q1_problems = q1_mismatches(&followed.q1, &reference.q1, 1);
    assert!(
        q1_problems.is_empty(),
        "{:?}",
        &q1_problems[..q1_problems.len().min(5)]
    );
    let agreement = q2_agreement(&followed.q2, &reference.q2);
    assert!(
        agreement.ratio() >= 0.99,
        "Q2 agreement {}",
        agreement.ratio()
    );
    let after = run_queries(&cluster, &readings, QueryKind::All, EmitArg::Every)
        .await
        .unwrap();
    assert_eq!(after.private.q1, followed.q1);
    assert_eq!(after.private.q2, followed.q2);
    cluster.shutdown().await;
}

/// A real house: over a hundred plugs reading once a minute for half a day. A batch of 4096
/// readings then spans about 38 minutes and carries thousands of window histograms: batches
/// must be cut by bytes as well as by count, or the clouds refuse them as too large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_house_of_many_slow_plugs_is_uploaded_whole_and_queried_right() {
    let readings = house_of(1, 107, 12, 60);
    let dir = tempfile::tempdir().unwrap();
    // The sensor's defaults, as users run it.
    let pipeline = PipelineArgs {
        batch_size: 4096,
        in_flight: 8,
        ttl_ms: 2000,
        speedup: None,
        histograms: true,
    };
    let cluster = uploaded(&readings, dir.path(), &pipeline).await;
    q1_exact_and_q2_agreeing(&cluster, &readings).await;
    cluster.shutdown().await;
}

/// Robust mode feeds the queries what plain mode does: every record and every load histogram
/// proven by its sensor and verified by the clouds, Q1 exact and Q2 agreeing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q1_is_exact_and_q2_agrees_on_robust_reports() {
    let readings = house_of(2, 5, 2, 5);
    let dir = tempfile::tempdir().unwrap();
    let options = ClusterOptions {
        robust: true,
        ..ClusterOptions::default()
    };
    let cluster = uploaded_with(&readings, dir.path(), &small_batches(), options).await;
    assert!(cluster.is_robust());
    q1_exact_and_q2_agreeing(&cluster, &readings).await;
    cluster.shutdown().await;
}

/// Windows that pass the retention horizon go to each cloud's archive in encrypted storage
/// and leave its values table; the DEBS queries, which reach back over the whole history,
/// stay exact, before and after a cloud restarts. No app can read a cloud's archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q1_is_exact_and_q2_agrees_across_the_archive_horizon() {
    let readings = synthetic(26, 60);
    let dir = tempfile::tempdir().unwrap();
    let storage = (0..3)
        .map(|id| {
            mcloud_store::source::SourceConfig::local(id, dir.path().join(format!("source{id}")))
        })
        .collect();
    let options = ClusterOptions {
        retention_secs: Some(mcloud_cloud::MIN_RETENTION_SECS),
        storage,
        ..Default::default()
    };
    // The upload's own check reveals every window of the history, archived ones included.
    let mut cluster = uploaded_with(&readings, dir.path(), &small_batches(), options).await;
    let windows = (readings.iter().map(|r| r.ts / 30))
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    for party in 0..3 {
        let r = cluster.cloud(party).unwrap().status()["retention"].clone();
        let hours = r["archive"]["hours"].as_u64().unwrap();
        assert!(hours >= 20, "party {party}: {r}");
        // Three hours kept, and at most one more while the horizon waits for a whole hour.
        let kept = r["stored_windows"].as_u64().unwrap();
        assert!(kept <= 4 * 120, "party {party}: {r}");
        assert!(
            kept < windows / 4,
            "party {party}: {r} of {windows} windows"
        );
    }
    q1_exact_and_q2_agreeing(&cluster, &readings).await;

    // A restart reads only the values table; the archive answers the rest as before.
    cluster.restart_cloud(0).await.unwrap();
    let r = cluster.cloud(0).unwrap().status()["retention"].clone();
    assert!(r["archive"]["hours"].as_u64().unwrap() >= 20, "{r}");
    assert_eq!(r["archive"]["hours_read_back"], 0, "{r}");
    q1_exact_and_q2_agreeing(&cluster, &readings).await;

    // A year on, every file is near its expiry: the cloud refreshes each (a tenth of its
    // packets under new keys), and what it reads back after another restart is the same.
    let hours = r["archive"]["hours"].as_u64().unwrap() as usize;
    let later = mcloud_catalog::now_ms() + 340 * 86_400 * 1000;
    let archive = cluster.cloud(0).unwrap().archive().unwrap().clone();
    assert_eq!(archive.refresh_due(later).await.unwrap(), hours);
    assert_eq!(
        archive.refresh_due(mcloud_catalog::now_ms()).await.unwrap(),
        0
    );
    cluster.restart_cloud(0).await.unwrap();
    q1_exact_and_q2_agreeing(&cluster, &readings).await;

    // The archive is the cloud's own: the owner of every house can neither list nor read it.
    let owner = cluster
        .store_client(&cluster.owner_token(0..4).unwrap())
        .unwrap();
    let cloud = mcloud_store::master::cloud_user(0);
    assert!(owner.list(Some(&cloud)).await.unwrap().is_empty());
    let hour = r["archive"]["archived_from"].as_u64().unwrap();
    let hour = hour - hour % 3600 + 3600;
    let e = owner
        .get(&cloud, &format!("windows/{hour}"), None)
        .await
        .unwrap_err();
    assert!(
        ["not_found", "store_forbidden"].contains(&e.code().as_str()),
        "{e}"
    );
    // Nor can an app call the clouds' route to the masters: it takes peer certificates.
    let app = cluster
        .app_client(&cluster.owner_token(0..4).unwrap())
        .unwrap();
    let url = format!(
        "{}{}",
        cluster.catalog_urls()[0],
        mcloud_store::wire::STORE_CLOUD_PATH
    );
    let answer = app.post(url).body(Vec::new()).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "peer_certificate_missing", "{body}");
    cluster.shutdown().await;
}

/// A collector waiting for a cloud that lags the others asks again only that cloud: the
/// answers of the clouds that were ready are kept, not thrown away and asked for again. Two
/// clouds hear that the stream ended, the third a second later; the bytes the waiting
/// collector received are those of one answer from each cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_collector_asks_again_only_the_clouds_not_ready() {
    use mcloud_core::paths::WATERMARK_PATH;
    use mcloud_core::wire::WatermarkRequest;
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::cluster(dir.path(), 3, ClusterOptions::default()).await;
    let t0 = 1_377_986_400;
    let readings: Vec<Reading> = (0..40)
        .map(|i| Reading {
            id: i,
            ts: t0 + i * 3,
            value: 100 + i,
            metric: Metric::Load,
            group: mcloud_core::GroupKey {
                house: 1,
                household: 0,
                plug: (i % 4) as u32,
            },
        })
        .collect();
    let uploader = common::commit(&cluster, readings).await;
    let end = t0 + 120;
    let sensor = common::sensor(&cluster).await;
    let body = postcard::to_stdvec(&WatermarkRequest {
        ts: end,
        end_of_stream: true,
    })
    .unwrap();
    for cloud in &cluster.cloud_urls()[..2] {
        let url = format!("{cloud}{WATERMARK_PATH}");
        common::expect(common::post_raw(&sensor, &url, body.clone()).await, 200, "");
    }
    let specs = [RangeSpec {
        from: t0,
        to: end,
        histograms: false,
    }];
    let waiting = cluster.collector().unwrap();
    let lagging = waiting
        .range(specs[0])
        .await
        .expect_err("the third cloud has not closed the windows");
    assert!(lagging.is_not_ready(), "{lagging}");
    let before = waiting.range_bytes();
    let waited = {
        let asked = waiting.ranges_when_ready(&specs, Duration::from_secs(30));
        let late = async {
            // Ten or so polls of the lagging cloud pass first.
            tokio::time::sleep(Duration::from_secs(1)).await;
            uploader.advance_watermark(end, true).await.unwrap();
        };
        tokio::join!(asked, late).0.unwrap()
    };
    let once = cluster.collector().unwrap();
    let answers = once.ranges(&specs).await.unwrap();
    assert_eq!(waited, answers);
    assert_eq!(answers[0].len(), 4, "four plugs");
    assert_eq!(
        waiting.range_bytes() - before,
        once.range_bytes(),
        "the waiting collector received more than one answer from each cloud"
    );
    cluster.shutdown().await;
}
