//! The private pipeline end to end on loopback TLS, against the plaintext reference.

use mcloud::cluster::{ClusterSpec, LocalCluster};
use mcloud::demo::{run_pipeline, PipelineArgs};
use mcloud_collector::Query;
use mcloud_core::reading::GroupLevel;
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use mcloud_core::Reading;

async fn run(
    readings: &[Reading],
    level: GroupLevel,
    crash_fraction: f64,
    min_count: u64,
) -> mcloud::demo::PipelineRun {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(ClusterSpec {
        parties: 3,
        window_secs: 60,
        grace_secs: 60,
        dir: dir.path().to_path_buf(),
    })
    .await
    .unwrap();
    let pipeline = PipelineArgs {
        batch_size: 500,
        in_flight: 4,
        ttl_ms: 1500,
        speedup: None,
        histograms: false,
    };
    let query = Query {
        from: 0,
        to: u64::MAX,
        level,
        min_count,
    };
    let run = run_pipeline(
        &cluster,
        readings,
        &pipeline,
        &query,
        crash_fraction,
        7,
        false,
    )
    .await
    .unwrap();
    cluster.shutdown().await;
    run
}

fn synthetic(minutes: u64) -> Vec<Reading> {
    Synthetic::new(SyntheticConfig {
        houses: 3,
        households_per_house: 2,
        plugs_per_household: 3,
        duration_secs: minutes * 60,
        interval_secs: 2,
        ..Default::default()
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_sensors_are_excluded_everywhere() {
    let readings = synthetic(10);
    let run = run(&readings, GroupLevel::Household, 0.3, 1).await;
    assert!(run.check.ok(), "{:?}", run.check.problems);
    assert!(!run.report.crashed.is_empty(), "no batch was crashed");
    assert!(run.report.committed_batches > 0);
    let revealed: u64 = run
        .revealed
        .windows
        .iter()
        .flat_map(|w| &w.groups)
        .map(|g| g.totals.count)
        .sum();
    let crashed: usize = run.report.crashed.iter().map(|b| b.readings.len()).sum();
    assert_eq!(revealed as usize, readings.len() - crashed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_groups_are_withheld() {
    let readings = synthetic(4);
    // Every plug reports 30 readings per 60 s window and metric: with a minimum of 31 every
    // plug-level group is withheld, and the check confirms each was withheld for that reason.
    let run = run(&readings, GroupLevel::Plug, 0.0, 31).await;
    assert!(run.check.ok(), "{:?}", run.check.problems);
    assert!(run.revealed.withheld() > 0);
    assert!(run
        .revealed
        .windows
        .iter()
        .all(|w| w.groups.iter().all(|g| g.totals.count >= 31)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_debs_samples_match_the_plaintext_reference() {
    for name in [
        "smartgrid_input_2seconds.csv",
        "sorted100M.60.h0.hh9.p0.csv",
    ] {
        let Some(path) = mcloud_core::samples::sample_file(name) else {
            continue;
        };
        let readings = mcloud_core::csv::read_file(&path).unwrap();
        for level in [GroupLevel::House, GroupLevel::Plug] {
            let run = run(&readings, level, 0.0, 1).await;
            assert!(run.check.ok(), "{name} {level:?}: {:?}", run.check.problems);
            assert_eq!(run.report.committed_readings as usize, readings.len());
            assert!(run.check.matched > 0, "{name}: nothing revealed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_too_late_for_their_window_are_reported_not_dropped() {
    use mcloud_client::{Fate, Outbox, Sensor, SensorConfig};
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(ClusterSpec {
        parties: 3,
        window_secs: 60,
        grace_secs: 0,
        dir: dir.path().to_path_buf(),
    })
    .await
    .unwrap();
    let readings = synthetic(5);
    let sensor = Sensor::new(
        cluster
            .uploader(std::time::Duration::from_secs(10))
            .unwrap(),
        Outbox::open(&dir.path().join("outbox.redb")).unwrap(),
        SensorConfig {
            batch_size: 100,
            ..SensorConfig::default()
        },
    );
    // Another sensor already closed every window up to the end of the data.
    let end = readings.iter().map(|r| r.ts).max().unwrap();
    sensor
        .uploader()
        .advance_watermark(end, true)
        .await
        .unwrap();
    let report = sensor
        .send(readings.iter().copied(), |_| Fate::Complete, |_| {})
        .await
        .unwrap();
    assert_eq!(report.committed_batches, 0);
    let missed: usize = report.missed.iter().map(|b| b.readings.len()).sum();
    assert_eq!(missed, readings.len(), "every late reading is reported");
    assert!(
        report.missed[0].reason.contains("after the window closed"),
        "{}",
        report.missed[0].reason
    );
    cluster.shutdown().await;
}
