//! The replicated catalog as real OS processes: three `mcloud node` processes, each running one
//! cloud and one catalog voter, talking over loopback TLS. The catalog leader is killed with
//! SIGKILL in the middle of an upload and restarted; the upload still ends with every batch
//! decided the same way everywhere, and the revealed sums equal the plaintext reference.

mod common;
use common::{expected_rows, free_port, rows_of, wait_for, Proc, BIN, SYNTHETIC_ARGS};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Deployment {
    dir: PathBuf,
    catalog_ports: Vec<u16>,
}

impl Deployment {
    fn write(dir: &Path) -> Deployment {
        mcloud::authority::write_local(&dir.join("trust"), 3, 3).unwrap();
        let catalog_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cloud_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let endpoint = |p: usize| {
            format!(
                "{{ url = \"https://127.0.0.1:{}\", ca = \"trust/party{p}.pem\" }}",
                catalog_ports[p]
            )
        };
        let mut peers = String::new();
        for (p, port) in catalog_ports.iter().enumerate() {
            peers += &format!(
                "[[catalog.peers]]\nid = {}\nurl = \"https://127.0.0.1:{port}\"\nca = \"trust/party{p}.pem\"\n",
                p + 1
            );
        }
        for party in 0..3 {
            let others: Vec<String> = (0..3).filter(|p| *p != party).map(endpoint).collect();
            let text = format!(
                "data_dir = \"n{party}\"\n\
                 [catalog]\ncredentials = \"trust/voter{party}\"\nlisten = \"127.0.0.1:{}\"\n\
                 node_id = {}\n{peers}\
                 [cloud]\ncredentials = \"trust/cloud{party}\"\nlisten = \"127.0.0.1:{}\"\n\
                 party = {party}\nparties = 3\n\
                 catalog = {}\ncatalog_nodes = [{}]\n",
                catalog_ports[party],
                party + 1,
                cloud_ports[party],
                endpoint(party),
                others.join(", ")
            );
            std::fs::write(dir.join(format!("node{party}.toml")), text).unwrap();
        }
        let mut text = format!(
            "catalog = {}\ncatalog_nodes = [{}, {}]\n[credentials]\nsensor = \"trust/sensor.toml\"\n\
             app = \"trust/owner.token\"\n",
            endpoint(0),
            endpoint(1),
            endpoint(2)
        );
        for (party, port) in cloud_ports.iter().enumerate() {
            text += &format!(
                "[[clouds]]\nurl = \"https://127.0.0.1:{port}\"\nca = \"trust/party{party}.pem\"\n"
            );
        }
        std::fs::write(dir.join("deployment.toml"), text).unwrap();
        Deployment {
            dir: dir.to_path_buf(),
            catalog_ports,
        }
    }

    fn start_node(&self, party: usize) -> Proc {
        Proc(
            Command::new(BIN)
                .args(["node", "--config"])
                .arg(self.dir.join(format!("node{party}.toml")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn sensor(&self) -> Proc {
        Proc(
            Command::new(BIN)
                .arg("sensor")
                .arg("--deployment")
                .arg(self.dir.join("deployment.toml"))
                .arg("--outbox")
                .arg(self.dir.join("sensor/outbox.redb"))
                .args(SYNTHETIC_ARGS)
                .args(["--batch-size", "20", "--in-flight", "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    fn query_csv(&self) -> String {
        let out = Command::new(BIN)
            .arg("query")
            .arg("--deployment")
            .arg(self.dir.join("deployment.toml"))
            .args(["--group", "plug", "--output", "csv", "--wait-secs", "60"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Catalog node `party`'s status, once it answers.
    async fn catalog_status(&self, party: usize) -> Option<serde_json::Value> {
        let ca = std::fs::read_to_string(self.dir.join(format!("trust/party{party}.pem"))).ok()?;
        let http = mcloud_core::tls::client(&[ca]).ok()?;
        let url = format!("https://127.0.0.1:{}/v1/status", self.catalog_ports[party]);
        http.get(url).send().await.ok()?.json().await.ok()
    }

    /// The party whose catalog voter leads partition 0, as the leader itself says.
    async fn leader(&self) -> Option<usize> {
        for party in 0..3 {
            if let Some(s) = self.catalog_status(party).await {
                if s["partitions"][0]["state"] == "Leader" {
                    return Some(party);
                }
            }
        }
        None
    }

    async fn applied(&self, party: usize) -> Option<u64> {
        self.catalog_status(party).await?["partitions"][0]["last_applied"].as_u64()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_catalog_leader_mid_upload_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::write(dir.path());
    let mut nodes: Vec<Option<Proc>> = (0..3).map(|p| Some(d.start_node(p))).collect();
    let leader = wait_for(60, "a catalog leader", async || d.leader().await).await;
    let mut sensor = d.sensor();
    // Let the upload get going, then SIGKILL the process of the catalog leader.
    wait_for(60, "flags committed", async || {
        d.applied(leader).await.filter(|a| *a >= 30)
    })
    .await;
    assert!(
        sensor.0.try_wait().unwrap().is_none(),
        "the sensor finished before the kill"
    );
    drop(nodes[leader].take());
    let killed_at = Instant::now();
    let new_leader = wait_for(60, "a new catalog leader", async || {
        d.leader().await.filter(|l| *l != leader)
    })
    .await;
    let leaderless = killed_at.elapsed();
    eprintln!("catalog leader {leader} killed; {new_leader} leads after {leaderless:?}");
    // The killed process ran a cloud too, which the sensor needs for every batch: bring it
    // back, and the catalog keeps committing the sensor's flags.
    let before = d.applied(new_leader).await.unwrap_or(0);
    nodes[leader] = Some(d.start_node(leader));
    wait_for(60, "commits after the leader change", async || {
        d.applied(new_leader).await.filter(|a| *a > before + 5)
    })
    .await;
    // The restarted voter catches up with the leader.
    wait_for(60, "the restarted voter catching up", async || {
        let (mine, theirs) = (d.applied(leader).await?, d.applied(new_leader).await?);
        (mine + 2 >= theirs).then_some(())
    })
    .await;
    let until = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = sensor.0.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = sensor.0.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            assert!(status.success(), "sensor failed: {err}");
            break;
        }
        assert!(Instant::now() < until, "the sensor did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows_of(&d.query_csv()), expected_rows());
    // Every voter holds the same decisions.
    let counts = wait_for(60, "voters agreeing on the flags", async || {
        let mut all = Vec::new();
        for p in 0..3 {
            all.push(d.catalog_status(p).await?["partitions"][0]["flags"].clone());
        }
        (all[0] == all[1] && all[1] == all[2]).then_some(all.remove(0))
    })
    .await;
    assert_eq!(counts["open"], 0, "{counts}");
}
