//! Prometheus metrics of running processes: after a sensor uploaded to a three-party
//! deployment of `mcloud node` processes and a collector revealed the windows, every cloud and
//! catalog voter serves `GET /metrics` in the Prometheus text format, which parses; its
//! counters end in `_total`, its histograms name their unit, and the figures agree with what
//! happened (batches stored and committed at every cloud, upload requests counted by route,
//! one leader among the voters, Raft writes committed at the leader).

mod common;
use mcloud::processes::ProcessCluster;
use prometheus_parse::{Sample, Scrape, Value};
use std::time::Duration;

async fn scrape(http: &reqwest::Client, base: &str) -> Scrape {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(!scrape.samples.is_empty(), "{text}");
    for (name, doc) in &scrape.docs {
        assert!(!doc.is_empty(), "{name} has no help text");
    }
    for s in &scrape.samples {
        match s.value {
            Value::Counter(_) => assert!(s.metric.ends_with("_total"), "{}", s.metric),
            Value::Histogram(_) => assert!(
                s.metric.ends_with("_seconds") || s.metric.ends_with("_bytes"),
                "histogram {} names no unit",
                s.metric
            ),
            _ => {}
        }
    }
    scrape
}

/// The value of `name`'s series whose labels include `labels` (summed over the others).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(number)
        .sum()
}

fn number(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        Value::Summary(_) => 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_metrics_that_parse_and_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ProcessCluster::write(common::process_spec(dir.path())).unwrap();
    cluster.start_all().unwrap();
    let http = cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let mut sensor = common::start_sensor(&cluster, &["--batch-size", "100"]);
    common::sensor_succeeds(&mut sensor, &cluster, 120).await;
    let sensor_log = std::fs::read_to_string(dir.path().join("logs/sensor.log")).unwrap();
    let batches: f64 = sensor_log
        .split("sensor: ")
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no batch count in the sensor's report: {sensor_log}"));
    common::query_plugs(&cluster.deployment_path(), 60);

    for party in 0..3 {
        let m = scrape(&http, &cluster.cloud_url(party)).await;
        let stored = value(&m, "mcloud_cloud_batches_total", &[("outcome", "stored")]);
        assert_eq!(stored, batches, "cloud {party}: batches stored");
        common::wait_for(30, "every flag applied", async || {
            let m = scrape(&http, &cluster.cloud_url(party)).await;
            let committed = value(
                &m,
                "mcloud_cloud_batches_total",
                &[("outcome", "committed")],
            );
            (committed == batches).then_some(())
        })
        .await;
        let uploads = value(
            &m,
            "mcloud_http_requests_total",
            &[("route", "/v1/upload"), ("method", "POST"), ("code", "200")],
        );
        assert!(
            uploads >= batches,
            "cloud {party}: {uploads} uploads answered"
        );
        assert!(
            value(
                &m,
                "mcloud_http_request_duration_seconds",
                &[("route", "/v1/upload")]
            ) >= uploads
        );
        assert!(value(&m, "mcloud_http_request_body_bytes_total", &[]) > 0.0);
        assert!(value(&m, "mcloud_cloud_workers", &[]) >= 1.0);
        assert!(value(&m, "mcloud_cloud_records_total", &[]) > 0.0);
        // What `bench --debs` reads from every cloud process.
        assert!(
            m.samples
                .iter()
                .any(|s| s.metric == "mcloud_cloud_policy_seconds_total"),
            "cloud {party}: no policy time"
        );
        assert!(value(&m, "process_resident_memory_bytes", &[]) > 1e6);
        assert!(value(&m, "process_open_fds", &[]) > 0.0);
    }

    let mut leaders = 0.0;
    let mut commits = 0.0;
    for i in 0..cluster.catalog_nodes() {
        let m = scrape(&http, &cluster.catalog_url(i)).await;
        leaders += value(&m, "mcloud_catalog_raft_leader", &[("partition", "0")]);
        commits += value(&m, "mcloud_catalog_commit_duration_seconds", &[]);
        assert!(value(&m, "mcloud_catalog_raft_term", &[("partition", "0")]) >= 1.0);
        assert!(
            value(
                &m,
                "mcloud_catalog_flags",
                &[("partition", "0"), ("state", "committed")]
            ) >= batches,
            "voter {i}"
        );
    }
    assert_eq!(leaders, 1.0, "one voter leads partition 0");
    assert!(commits > 0.0, "no Raft write was timed");
}
