//! Helpers shared by the integration tests: in-process clusters and real `mcloud` processes.
#![allow(dead_code)]

use mcloud::cluster::{ClusterOptions, ClusterSpec, LocalCluster, GATEWAY};
use mcloud_collector::Reference;
use mcloud_core::reading::GroupLevel;
use mcloud_core::synthetic::{Synthetic, SyntheticConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;

pub const BIN: &str = env!("CARGO_BIN_EXE_mcloud");

/// A child process killed when the test ends, whatever happens.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    mcloud::processes::free_port().unwrap()
}

pub const SYNTHETIC_ARGS: [&str; 10] = [
    "--houses",
    "2",
    "--households",
    "1",
    "--plugs",
    "3",
    "--hours",
    "0.25",
    "--interval",
    "1",
];

/// The readings `SYNTHETIC_ARGS` make.
pub fn synthetic_readings() -> Vec<mcloud_core::Reading> {
    Synthetic::new(SyntheticConfig {
        houses: 2,
        households_per_house: 1,
        plugs_per_household: 3,
        duration_secs: 900,
        interval_secs: 1,
        ..Default::default()
    })
    .collect()
}

/// The CSV `mcloud query` must print, from the same synthetic input in plaintext.
pub fn expected_rows() -> BTreeMap<String, String> {
    let readings = synthetic_readings();
    let mut reference = Reference::new(60, GroupLevel::Plug);
    readings.iter().for_each(|r| reference.add(r));
    reference
        .groups()
        .map(|((w, metric, g), t)| {
            (
                format!(
                    "{},{},{},{},{}",
                    w.start,
                    metric,
                    g.house,
                    g.household.unwrap_or_default(),
                    g.plug.unwrap_or_default()
                ),
                format!("{},{}", t.count, t.sum_decimal()),
            )
        })
        .collect()
}

pub fn rows_of(csv: &str) -> BTreeMap<String, String> {
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "window_start,window_end,metric,house_id,household_id,plug_id,count,sum,mean,variance"
        )
    );
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (
                format!("{},{},{},{},{}", f[0], f[2], f[3], f[4], f[5]),
                format!("{},{}", f[6], f[7]),
            )
        })
        .collect()
}

/// The rows of `got` that are missing from, extra to, or different in `want`, one per line
/// (empty when they are equal): a failed comparison names only what differs.
pub fn row_differences(got: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> String {
    let keys: std::collections::BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    keys.into_iter()
        .filter_map(|k| match (got.get(k), want.get(k)) {
            (Some(g), Some(w)) if g == w => None,
            (g, w) => Some(format!("{k}: got {g:?}, want {w:?}\n")),
        })
        .collect()
}

/// Polls `f` every 100 ms until it gives a value; fails the test after `secs`.
pub async fn wait_for<T>(secs: u64, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < until,
            "{what} did not happen within {secs} s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An in-process cluster of `parties` clouds with 60 s windows and 60 s grace, in `dir`.
pub async fn cluster(dir: &Path, parties: u16, options: ClusterOptions) -> LocalCluster {
    LocalCluster::start_with(
        ClusterSpec {
            parties,
            window_secs: 60,
            grace_secs: 60,
            dir: dir.to_path_buf(),
        },
        options,
    )
    .await
    .unwrap()
}

/// Uploads `readings` as the gateway sensor in one transaction, which must commit, and ends the
/// sensor's stream at `end` so every window up to it closes.
pub async fn commit_and_close(
    cluster: &LocalCluster,
    readings: Vec<mcloud_core::Reading>,
    end: u64,
) {
    let uploader = commit(cluster, readings).await;
    uploader.advance_watermark(end, true).await.unwrap();
}

/// Uploads `readings` as the gateway sensor in one transaction, which must commit; the
/// sensor's stream stays open. Returns the sensor's uploader.
pub async fn commit(
    cluster: &LocalCluster,
    readings: Vec<mcloud_core::Reading>,
) -> mcloud_client::Uploader {
    let uploader = cluster
        .uploader(std::time::Duration::from_secs(30))
        .unwrap();
    let batch = mcloud_client::PlainBatch::new(mcloud::cluster::GATEWAY.sensor, readings);
    assert_eq!(
        uploader
            .transact(&batch, mcloud_client::Fate::Complete)
            .await
            .unwrap(),
        mcloud_client::Outcome::Committed
    );
    uploader
}

/// The JSON `http` gets from `url` (status pages).
pub async fn json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// Reveals every ready window of `cluster` at `level` as its owner and asserts that it equals
/// `reference` group by group, with nothing left unready.
pub async fn assert_reveals(cluster: &LocalCluster, reference: &Reference, level: GroupLevel) {
    let query = mcloud_collector::Query {
        from: 0,
        to: u64::MAX,
        level,
        min_count: 1,
    };
    let revealed = cluster
        .collector()
        .unwrap()
        .collect_when_ready(&query, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert!(revealed.not_ready.is_empty(), "{:?}", revealed.not_ready);
    let report = mcloud_collector::check(&revealed, reference, 1);
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.matched, reference.groups().count() as u64);
}

/// Waits up to `secs` for a sensor process to end, and asserts it succeeded (the end of its
/// log otherwise).
pub async fn sensor_succeeds(
    sensor: &mut Proc,
    cluster: &mcloud::processes::ProcessCluster,
    secs: u64,
) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = sensor.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < until,
            "the sensor did not finish:\n{}",
            cluster.log_tail("sensor", 30)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "sensor failed: {}",
        cluster.log_tail("sensor", 30)
    );
}

/// `mcloud query --group plug --output csv` against `deployment`, waiting up to `wait_secs`
/// for the windows; its stdout.
pub fn query_plugs(deployment: &Path, wait_secs: u64) -> String {
    let out = std::process::Command::new(BIN)
        .arg("query")
        .arg("--deployment")
        .arg(deployment)
        .args(["--group", "plug", "--output", "csv", "--wait-secs"])
        .arg(wait_secs.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Windows not ready are named there: a failed comparison of rows is read beside it.
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three parties of `mcloud node` processes in `dir`, three voters, one partition, 60 s
/// windows: what most process tests start from (they change the fields they need).
pub fn process_spec(dir: &Path) -> mcloud::processes::ProcessSpec {
    mcloud::processes::ProcessSpec::new(BIN.into(), dir.to_path_buf())
}

/// `mcloud sensor` on the synthetic input against `cluster`, with its outbox and log in the
/// cluster's directory and `extra` options (batch size, pacing).
pub fn start_sensor(cluster: &mcloud::processes::ProcessCluster, extra: &[&str]) -> Proc {
    let dir = cluster.dir();
    let log = std::fs::File::create(dir.join("logs/sensor.log")).unwrap();
    Proc(
        std::process::Command::new(BIN)
            .arg("sensor")
            .arg("--deployment")
            .arg(cluster.deployment_path())
            .arg("--outbox")
            .arg(dir.join("sensor/outbox.redb"))
            .args(SYNTHETIC_ARGS)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// A client and the gateway sensor's session for every node (each node's party's): for
/// sending hand-made requests as the sensor.
pub struct Sensor {
    pub http: reqwest::Client,
    pub sessions: Vec<(String, String)>,
}

pub async fn sensor(cluster: &LocalCluster) -> Sensor {
    let sessions = mcloud_client::SensorSessions::new(
        cluster.sensor_credentials(GATEWAY),
        cluster.cloud_endpoints().unwrap(),
    );
    let mut by_node = Vec::new();
    let clouds = cluster.cloud_urls().into_iter().enumerate();
    let voters = cluster
        .catalog_urls()
        .into_iter()
        .zip(cluster.catalog_parties())
        .map(|(url, party)| (party as usize, url));
    for (party, url) in clouds.chain(voters) {
        by_node.push((url, sessions.header(party as u16).await.unwrap()));
    }
    Sensor {
        http: cluster.http(),
        sessions: by_node,
    }
}

/// POSTs raw bytes as the sensor; returns status and body text.
pub async fn post_raw(sensor: &Sensor, url: &str, body: Vec<u8>) -> (u16, String) {
    let session = sensor
        .sessions
        .iter()
        .find(|(node, _)| url.starts_with(node.as_str()))
        .map(|(_, session)| session.clone())
        .unwrap_or_default();
    let r = sensor
        .http
        .post(url)
        .header("authorization", session)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Asserts an answer's status and that its text names the problem.
pub fn expect(answer: (u16, String), status: u16, words: &str) {
    assert_eq!(
        answer.0, status,
        "expected {status} naming {words:?}, got {answer:?}"
    );
    assert!(
        answer.1.contains(words),
        "answer {answer:?} does not name the problem ({words:?})"
    );
}
