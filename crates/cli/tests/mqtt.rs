//! MQTT ingest against a real Mosquitto broker: devices publish DEBS CSV lines with QoS 1,
//! `mcloud bridge` takes them into a three-party deployment of `mcloud node` processes. The
//! bridge is SIGKILLed in the middle; what is published while it is down waits in the
//! broker's persistent session, and part of the stream is published twice. Every reading is
//! still counted exactly once: the revealed sums equal the plaintext reference. The same over
//! TLS with client certificates, and a broker the bridge does not trust is refused. Needs
//! `mosquitto` (Debian packages mosquitto, mosquitto-clients; `.ci/run` installs them);
//! prints SKIPPED without.

mod common;
use common::{expected_rows, rows_of, Proc, BIN};

use mcloud::processes::ProcessCluster;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mosquitto() -> Option<&'static str> {
    ["mosquitto", "/usr/sbin/mosquitto"].into_iter().find(|p| {
        Command::new(p)
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

/// A broker's and its clients' certificates, made for one test: the broker's CA signs the
/// broker's certificate (for 127.0.0.1) and the clients' (the bridge's, the devices').
struct Pki {
    dir: std::path::PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        // Every certificate names itself: OpenSSL (the broker's) takes a certificate whose
        // subject equals its issuer for self-signed, whatever signed it.
        let params = |name: &str, sans: Vec<String>| {
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p
        };
        let new_ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = params(name, Vec::new());
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            (p.self_signed(&key).unwrap(), key)
        };
        let (ca, ca_key) = new_ca("broker CA");
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
        write("ca.pem", ca.pem());
        for (name, san) in [("broker", "127.0.0.1"), ("client", "mcloud-bridge")] {
            let key = KeyPair::generate().unwrap();
            let cert = params(name, vec![san.to_string()])
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        // A CA that signed nothing here: trusting it alone, the broker's certificate fails.
        write("other-ca.pem", new_ca("another CA").0.pem());
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The listener's TLS lines: the broker asks every client for a certificate of its CA.
    fn listener(&self) -> String {
        format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            self.path("ca.pem"),
            self.path("broker.pem"),
            self.path("broker.key")
        )
    }

    /// `mcloud bridge`'s TLS options, trusting the CA in file `ca`.
    fn bridge_args(&self, ca: &str) -> Vec<String> {
        vec![
            "--mqtt-ca".into(),
            self.path(ca),
            "--mqtt-cert".into(),
            self.path("client.pem"),
            "--mqtt-key".into(),
            self.path("client.key"),
        ]
    }

    /// `mosquitto_pub`'s, as a device with a certificate of the broker's CA.
    fn publisher_args(&self) -> Vec<String> {
        vec![
            "--cafile".into(),
            self.path("ca.pem"),
            "--cert".into(),
            self.path("client.pem"),
            "--key".into(),
            self.path("client.key"),
        ]
    }
}

/// Starts Mosquitto on `port`, with TLS if `pki` is given. The broker keeps every message
/// for a subscriber that is away (no queue limit), as a deployment that must not lose
/// readings would configure it.
fn start_broker(broker: &str, dir: &Path, port: u16, pki: Option<&Pki>) -> Proc {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\n{}allow_anonymous true\nmax_queued_messages 0\n\
             max_inflight_messages 200\npersistence false\n",
            pki.map(Pki::listener).unwrap_or_default()
        ),
    )
    .unwrap();
    Proc(
        Command::new(broker)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mosquitto.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Publishes every line of `lines` as one QoS 1 message, as a device would.
fn publish(port: u16, lines: &[String]) {
    publish_with(port, lines, &[]);
}

fn publish_with(port: u16, lines: &[String], tls: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(tls)
        .args(["-t", "mcloud/readings/house0", "-q", "1", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (mosquitto-clients)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for line in lines {
            writeln!(stdin, "{line}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
}

fn bridge(cluster: &ProcessCluster, port: u16, log: &Path) -> Proc {
    bridge_with(cluster, port, log, &[])
}

fn bridge_with(cluster: &ProcessCluster, port: u16, log: &Path, extra: &[String]) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Proc(
        Command::new(BIN)
            .arg("bridge")
            .arg("--deployment")
            .arg(cluster.deployment_path())
            .args(["--mqtt", &format!("127.0.0.1:{port}")])
            .arg("--outbox")
            .arg(cluster.dir().join("bridge/outbox.redb"))
            .args(["--batch-size", "200", "--round-ms", "200"])
            .args(["--idle-exit-secs", "4"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// A process deployment written from `spec` and started, ready to take uploads.
async fn deployment(spec: mcloud::processes::ProcessSpec) -> ProcessCluster {
    let mut cluster = ProcessCluster::write(spec).unwrap();
    cluster.start_all().unwrap();
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    cluster
}

/// The synthetic input `expected_rows` describes, one CSV line per reading.
fn synthetic_lines() -> Vec<String> {
    common::synthetic_readings()
        .iter()
        .map(mcloud_core::csv::format_line)
        .collect()
}

/// Waits until the bridge's log has said `what` `times` times.
fn wait_in_log(log: &Path, what: &str, times: usize) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(what).count() >= times {
            return;
        }
        assert!(
            Instant::now() < until,
            "the bridge never said {what:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_stream_is_counted_once_across_a_bridge_crash_and_redeliveries() {
    let Some(broker) = mosquitto() else {
        eprintln!("SKIPPED mqtt: mosquitto is not installed (Debian: mosquitto mosquitto-clients)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let _broker = start_broker(broker, dir.path(), port, None);
    let cluster = deployment(common::process_spec(dir.path())).await;
    let lines = synthetic_lines();
    let (first, second) = lines.split_at(lines.len() / 2);

    let log = dir.path().join("logs/bridge.log");
    let running = bridge(&cluster, port, &log);
    wait_in_log(&log, "subscribed", 1);
    publish(port, first);
    // Part of it is in flight or committed; the rest waits in the broker or the inbox.
    let http = cluster.http().unwrap();
    common::wait_for(60, "batches at cloud 0", async || {
        let url = format!("{}/v1/status", cluster.cloud_url(0));
        let status = common::json(&http, &url).await;
        (status["batches"].as_u64().unwrap_or(0) >= 5).then_some(())
    })
    .await;
    drop(running); // SIGKILL

    // While the bridge is down: the rest, and a repeat of the newest thousand readings.
    publish(port, second);
    publish(port, &first[first.len() - 1000..]);
    let mut again = bridge(&cluster, port, &log);
    let status = again.0.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "the restarted bridge failed:\n{text}");
    // "bridge: M messages, T readings taken (R delivered again, L late, ...": a repeat is
    // recognised by its id, or, once older than the progress reported, dropped as late.
    let summary = text.lines().last().unwrap_or_default();
    let count = |after: &str| -> u64 {
        summary
            .split(after)
            .next()
            .and_then(|head| head.rsplit([' ', '(']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count before {after:?} in {summary}"))
    };
    let not_taken = count(" delivered again") + count(" late");
    assert!(not_taken >= 1000, "repeats taken again: {summary}");

    let csv = common::query_plugs(&cluster.deployment_path(), 60);
    let differences = common::row_differences(&rows_of(&csv), &expected_rows());
    assert!(
        differences.is_empty(),
        "revealed sums differ from the reference:\n{differences}bridge log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The bridge speaks TLS to a broker that asks for client certificates: trusting the
/// broker's CA and showing a certificate of it, every reading is counted once; trusting
/// another CA, it refuses the broker's certificate, says so, and never subscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_speaks_tls_to_its_broker_and_refuses_one_it_does_not_trust() {
    let Some(broker) = mosquitto() else {
        eprintln!("SKIPPED mqtt: mosquitto is not installed (Debian: mosquitto mosquitto-clients)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let port = common::free_port();
    let _broker = start_broker(broker, dir.path(), port, Some(&pki));
    let cluster = deployment(common::process_spec(dir.path())).await;

    let untrusting_log = dir.path().join("logs/untrusting.log");
    let untrusting = bridge_with(
        &cluster,
        port,
        &untrusting_log,
        &[
            pki.bridge_args("other-ca.pem"),
            vec!["--client-id".into(), "untrusting".into()],
        ]
        .concat(),
    );
    wait_in_log(&untrusting_log, "mqtt:", 1);
    drop(untrusting);
    let text = std::fs::read_to_string(&untrusting_log).unwrap();
    assert!(
        text.contains("certificate") && !text.contains("subscribed"),
        "a broker whose certificate the bridge does not trust:\n{text}"
    );

    let log = dir.path().join("logs/bridge.log");
    // With Q2's histograms too: readings wait for their 30 s window to pass, and the
    // histograms the clouds take add up to what was published.
    let mut bridge = bridge_with(
        &cluster,
        port,
        &log,
        &[pki.bridge_args("ca.pem"), vec!["--histograms".into()]].concat(),
    );
    wait_in_log(&log, "subscribed", 1);
    let lines: Vec<String> = common::synthetic_readings()
        .iter()
        .map(mcloud_core::csv::format_line)
        .collect();
    publish_with(port, &lines, &pki.publisher_args());
    let status = bridge.0.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "the bridge failed:\n{text}");
    let csv = common::query_plugs(&cluster.deployment_path(), 60);
    let differences = common::row_differences(&rows_of(&csv), &expected_rows());
    assert!(
        differences.is_empty(),
        "revealed sums differ from the reference:\n{differences}bridge log:\n{text}"
    );

    // Each plug's load histogram over the whole stream, as the owner reads it.
    let readings = common::synthetic_readings();
    let mut expected: std::collections::BTreeMap<mcloud_core::GroupKey, Vec<u64>> =
        Default::default();
    for r in readings
        .iter()
        .filter(|r| r.metric == mcloud_core::Metric::Load)
    {
        expected
            .entry(r.group)
            .or_insert_with(|| vec![0; mcloud_core::histogram::BUCKETS])
            [mcloud_core::histogram::bucket_of(r.value)] += 1;
    }
    let deployment = mcloud::config::Deployment::load(&cluster.deployment_path()).unwrap();
    let collector = mcloud_collector::Collector::new(deployment.app_cloud_endpoints().unwrap());
    let first = readings.iter().map(|r| r.ts).min().unwrap();
    let last = readings.iter().map(|r| r.ts).max().unwrap();
    let answer = collector
        .range(mcloud_core::wire::RangeSpec {
            from: first - first % 60,
            to: last - last % 60 + 60,
            histograms: true,
        })
        .await
        .unwrap();
    let revealed: std::collections::BTreeMap<_, _> = answer
        .into_iter()
        .map(|(plug, (_, counts))| (plug, counts))
        .collect();
    assert_eq!(
        revealed, expected,
        "revealed histograms differ from the readings'"
    );
}

/// A robust deployment: the bridge sends what it takes from the broker as robust reports
/// (its `deployment.toml` says so; the clouds would refuse plain shares), and the revealed
/// sums equal the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_sends_robust_reports_to_a_robust_deployment() {
    let Some(broker) = mosquitto() else {
        eprintln!("SKIPPED mqtt: mosquitto is not installed (Debian: mosquitto mosquitto-clients)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let _broker = start_broker(broker, dir.path(), port, None);
    let cluster = deployment(mcloud::processes::ProcessSpec {
        robust: true,
        ..common::process_spec(dir.path())
    })
    .await;
    let lines = synthetic_lines();
    let log = dir.path().join("logs/bridge.log");
    let mut running = bridge(&cluster, port, &log);
    wait_in_log(&log, "subscribed", 1);
    publish(port, &lines);
    let status = running.0.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "the bridge failed:\n{text}");
    let csv = common::query_plugs(&cluster.deployment_path(), 60);
    let differences = common::row_differences(&rows_of(&csv), &expected_rows());
    assert!(
        differences.is_empty(),
        "revealed sums differ from the reference:\n{differences}bridge log:\n{text}"
    );
}
