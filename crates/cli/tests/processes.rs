//! Separate OS processes talking over loopback TLS, as in a real deployment: `mcloud node` for
//! each party, `mcloud sensor` and `mcloud query`. A cloud killed with SIGKILL in the middle
//! of an upload and restarted loses no acknowledged share; a sensor killed the same way and
//! restarted continues its input where it stopped, sending no reading twice; a sensor started
//! before any cloud exists keeps its batches and delivers them when the clouds come up; a CSV
//! input is checked whole before anything is sent, then streamed.

mod common;
use common::{expected_rows, free_port, rows_of, synthetic_readings, Proc, BIN, SYNTHETIC_ARGS};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Deployment {
    dir: PathBuf,
    catalog_port: u16,
    cloud_ports: Vec<u16>,
}

impl Deployment {
    fn write(dir: &Path) -> Deployment {
        // One voter (party 0's), three clouds.
        mcloud::authority::write_local(&dir.join("trust"), 3, 1).unwrap();
        let d = Deployment {
            dir: dir.to_path_buf(),
            catalog_port: free_port(),
            cloud_ports: (0..3).map(|_| free_port()).collect(),
        };
        let catalog = format!(
            "catalog = {{ url = \"https://127.0.0.1:{}\", ca = \"trust/party0.pem\" }}\n",
            d.catalog_port
        );
        for party in 0..3 {
            let mut text = format!("data_dir = \"n{party}\"\n");
            if party == 0 {
                text += &format!(
                    "[catalog]\ncredentials = \"trust/voter0\"\nlisten = \"127.0.0.1:{}\"\n",
                    d.catalog_port
                );
            }
            text += &format!(
                "[cloud]\ncredentials = \"trust/cloud{party}\"\nlisten = \"127.0.0.1:{}\"\n\
                 party = {party}\nparties = 3\n{catalog}",
                d.cloud_ports[party]
            );
            std::fs::write(dir.join(format!("node{party}.toml")), text).unwrap();
        }
        let mut text = catalog;
        text += "[credentials]\nsensor = \"trust/sensor.toml\"\napp = \"trust/owner.token\"\n";
        for (party, port) in d.cloud_ports.iter().enumerate() {
            text += &format!(
                "[[clouds]]\nurl = \"https://127.0.0.1:{port}\"\nca = \"trust/party{party}.pem\"\n"
            );
        }
        std::fs::write(dir.join("deployment.toml"), text).unwrap();
        d
    }

    fn start_node(&self, party: usize) -> Proc {
        let child = Command::new(BIN)
            .args(["node", "--config"])
            .arg(self.dir.join(format!("node{party}.toml")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Proc(child)
    }

    fn sensor(&self, extra: &[&str]) -> Proc {
        let child = Command::new(BIN)
            .arg("sensor")
            .arg("--deployment")
            .arg(self.dir.join("deployment.toml"))
            .arg("--outbox")
            .arg(self.dir.join("sensor/outbox.redb"))
            .args(SYNTHETIC_ARGS)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Proc(child)
    }

    fn query_csv(&self) -> String {
        let out = Command::new(BIN)
            .arg("query")
            .arg("--deployment")
            .arg(self.dir.join("deployment.toml"))
            .args(["--group", "plug", "--output", "csv", "--wait-secs", "30"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Waits until cloud `party` holds at least `n` batches (a minute at most).
    async fn wait_for_batches(&self, party: usize, n: u64) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let batches = self
                .cloud_status(party)
                .await
                .and_then(|s| s["batches"].as_u64())
                .unwrap_or(0);
            if batches >= n {
                return;
            }
            assert!(
                Instant::now() < until,
                "cloud {party} never received {n} batches"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cloud `party`'s status, once it answers.
    async fn cloud_status(&self, party: usize) -> Option<serde_json::Value> {
        let ca = std::fs::read_to_string(self.dir.join(format!("trust/party{party}.pem"))).ok()?;
        let http = mcloud_core::tls::client(&[ca]).ok()?;
        let url = format!("https://127.0.0.1:{}/v1/status", self.cloud_ports[party]);
        http.get(url).send().await.ok()?.json().await.ok()
    }
}

fn wait_success(mut sensor: Proc, limit: Duration) {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = sensor.0.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = sensor.0.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            assert!(status.success(), "sensor failed: {err}");
            return;
        }
        assert!(Instant::now() < until, "sensor did not finish in {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_killed_mid_upload_loses_no_acknowledged_share() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::write(dir.path());
    let _n0 = d.start_node(0);
    let mut n1 = Some(d.start_node(1));
    let _n2 = d.start_node(2);
    let mut sensor = d.sensor(&["--batch-size", "40", "--in-flight", "2"]);
    // Kill cloud 1 once it holds part of the stream, then bring it back on its data.
    d.wait_for_batches(1, 20).await;
    let held = d.cloud_status(1).await.unwrap()["batches"]
        .as_u64()
        .unwrap();
    assert!(
        sensor.0.try_wait().unwrap().is_none(),
        "the sensor finished before the kill"
    );
    drop(n1.take()); // SIGKILL
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _n1 = d.start_node(1);
    let recovered = loop {
        if let Some(s) = d.cloud_status(1).await {
            break s["batches"].as_u64().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        recovered >= held,
        "cloud 1 held {held} batches before the kill, {recovered} after"
    );
    wait_success(sensor, Duration::from_secs(120));
    assert_eq!(rows_of(&d.query_csv()), expected_rows());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_started_before_the_clouds_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::write(dir.path());
    let sensor = d.sensor(&["--wait-secs", "60"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _nodes: Vec<Proc> = (0..3).map(|p| d.start_node(p)).collect();
    wait_success(sensor, Duration::from_secs(120));
    assert_eq!(rows_of(&d.query_csv()), expected_rows());
}

/// A CSV input is streamed, not loaded: the sensor parses every line first (a bad line stops
/// it before anything is sent, naming the line), then reads the file again as it sends it; the
/// revealed sums equal the reference exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_input_is_checked_whole_then_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::write(dir.path());
    let _nodes: Vec<Proc> = (0..3).map(|p| d.start_node(p)).collect();
    let readings = synthetic_readings();
    let csv: String = readings
        .iter()
        .map(|r| mcloud_core::csv::format_line(r) + "\n")
        .collect();
    let sensor = |input: &Path| {
        let mut command = Command::new(BIN);
        command
            .arg("sensor")
            .arg("--deployment")
            .arg(dir.path().join("deployment.toml"))
            .arg("--outbox")
            .arg(dir.path().join("sensor/outbox.redb"))
            .arg("--input")
            .arg(input);
        command
    };
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, format!("{csv}1,2,3\n")).unwrap();
    let out = sensor(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let line = readings.len() + 1;
    assert!(
        stderr.contains(&format!("line {line}")) && stderr.contains("7 comma-separated"),
        "{stderr}"
    );
    for party in 0..3 {
        let status = loop {
            if let Some(s) = d.cloud_status(party).await {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            status["batches"].as_u64(),
            Some(0),
            "cloud {party}: {status}"
        );
    }
    let good = dir.path().join("good.csv");
    std::fs::write(&good, csv).unwrap();
    let child = sensor(&good)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_success(Proc(child), Duration::from_secs(120));
    assert_eq!(rows_of(&d.query_csv()), expected_rows());
}

/// SIGKILL the sensor mid-upload, start it again on the same outbox and input: it sends what
/// its outbox held, skips the batches it had already taken, and the revealed sums equal the
/// reference exactly (a reading sent twice or left out would show).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_killed_mid_upload_continues_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::write(dir.path());
    let _nodes: Vec<Proc> = (0..3).map(|p| d.start_node(p)).collect();
    let paced = ["--batch-size", "40", "--in-flight", "2", "--speedup", "40"];
    let sensor = d.sensor(&paced);
    d.wait_for_batches(0, 20).await;
    let mut sensor = sensor;
    assert!(
        sensor.0.try_wait().unwrap().is_none(),
        "the sensor finished before the kill"
    );
    drop(sensor); // SIGKILL
    let mut again = d.sensor(&paced);
    let status = again.0.wait().unwrap();
    let mut err = String::new();
    if let Some(mut e) = again.0.stderr.take() {
        use std::io::Read;
        e.read_to_string(&mut err).unwrap();
    }
    assert!(status.success(), "restarted sensor failed: {err}");
    assert!(
        err.contains("taken by an earlier run"),
        "the restarted sensor did not continue after the batches it had taken: {err}"
    );
    assert_eq!(rows_of(&d.query_csv()), expected_rows());
}
