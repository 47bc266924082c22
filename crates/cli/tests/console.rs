//! The web console in a real headless browser (Debian's `chromium`): while a sensor uploads
//! to a three-party deployment of `mcloud node` processes, a cloud's `/console` page loads,
//! runs its script against the node's status and metrics, and shows numbers that move from
//! one load to the next; a voter's shows its Raft partition. Prints SKIPPED without chromium.

mod common;

use mcloud::processes::ProcessCluster;
use mcloud_analytics::recent::recent;
use mcloud_analytics::{windows_from_readings, MemorySource};
use std::process::Command;
use std::time::Duration;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())
}

/// The page at `url` after its script ran for a few seconds of the browser's clock.
fn rendered(browser: &str, url: &str) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            // The node's certificate is signed by its party's CA, which the browser does not
            // know; mcloud's own clients pin it.
            "--ignore-certificate-errors",
            "--virtual-time-budget=4000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("running the browser");
    assert!(
        out.status.success(),
        "{browser} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text of the element with id `id`.
fn element(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let rest = &dom[start..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest[open..].find('<').unwrap();
    rest[open..open + close].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_live_figures_in_a_browser() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED console: no chromium (Debian: chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ProcessCluster::write(common::process_spec(dir.path())).unwrap();
    cluster.start_all().unwrap();
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    // Paced over about 20 s, so the figures move while the browser looks.
    let mut sensor = common::start_sensor(
        &cluster,
        &["--batch-size", "40", "--in-flight", "2", "--speedup", "45"],
    );

    let cloud = format!("{}/console", cluster.cloud_url(0));
    let committed = |dom: &str| -> u64 { element(dom, "batches-committed").parse().unwrap() };
    let first = common::wait_for(30, "committed batches on the console", async || {
        let dom = rendered(browser, &cloud);
        (committed(&dom) > 0).then_some(dom)
    })
    .await;
    assert_eq!(element(&first, "role"), "cloud 0");
    assert!(element(&first, "updated").parse::<u32>().unwrap() >= 2);
    assert!(element(&first, "rss").ends_with(" MB"));
    let later = common::wait_for(30, "the console's figures moving", async || {
        let dom = rendered(browser, &cloud);
        (committed(&dom) > committed(&first)).then_some(dom)
    })
    .await;
    assert!(element(&later, "workers").parse::<u32>().unwrap() >= 1);
    // The manager's periods come from the node, so the elasticity chart has them at once.
    assert!(
        element(&later, "periods").parse::<u32>().unwrap() >= 2,
        "{later}"
    );

    let mut leaders = 0;
    for i in 0..cluster.catalog_nodes() {
        let dom = rendered(browser, &format!("{}/console", cluster.catalog_url(i)));
        assert!(element(&dom, "role").starts_with("catalog voter"), "{dom}");
        leaders += dom.matches("class=\"leader\">Leader<").count();
    }
    assert_eq!(leaders, 1, "one voter shows itself leading partition 0");
    common::sensor_succeeds(&mut sensor, &cluster, 120).await;

    deployment_console(browser, &mut cluster).await;
}

/// `mcloud console` over the same deployment, once the sensor's stream ended: every node up,
/// the latest windows revealed per house; without its key nothing is answered; a cloud that
/// is killed shows as down, and the windows can no longer be revealed without it.
async fn deployment_console(browser: &str, cluster: &mut ProcessCluster) {
    let (_console, port, url) = start_console(cluster);
    let unkeyed = reqwest::get(format!("http://127.0.0.1:{port}/api/overview"))
        .await
        .unwrap();
    assert_eq!(unkeyed.status().as_u16(), 401);
    let answer: serde_json::Value = unkeyed.json().await.unwrap();
    assert_eq!(answer["code"], "console_key");
    let wrong = reqwest::get(format!("http://127.0.0.1:{port}/?key=0123"))
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);

    let dom = rendered(browser, &url);
    assert_eq!(element(&dom, "reachable"), "6 of 6", "{dom}");
    // The synthetic input is 15 minutes of 60 s windows, all closed at the end of the stream;
    // the console reveals the latest ten.
    assert_eq!(element(&dom, "revealed-count"), "10", "{dom}");
    assert_eq!(element(&dom, "implausible-count"), "0");
    assert!(
        dom.contains("house 0: 180, ") && dom.contains("house 1: 180, "),
        "{dom}"
    );
    // Each node's own figures: a cloud's workers, a voter's partition and its leader.
    let row = |id: &str| -> String {
        let row = &dom[dom.find(&format!("id=\"{id}\"")).expect(id)..];
        row[..row.find("</tr>").unwrap()].to_string()
    };
    assert!(
        row("node-cloud-0").contains(" 1 workers"),
        "{}",
        row("node-cloud-0")
    );
    assert!(
        row("node-catalog-voter-1").contains("partition 0: "),
        "{dom}"
    );
    assert!(row("node-catalog-voter-1").contains(", leader "), "{dom}");

    cluster.kill(mcloud::processes::Role::Cloud(1)).unwrap();
    let dom = rendered(browser, &url);
    assert_eq!(element(&dom, "reachable"), "5 of 6", "{dom}");
    let row = &dom[dom.find("id=\"node-cloud-1\"").expect("cloud 1's row")..];
    assert!(
        row[..row.find("</tr>").unwrap()].contains(">down<"),
        "{row}"
    );
}

/// `mcloud console` over `cluster`: the process, its port and the URL with its key.
fn start_console(cluster: &ProcessCluster) -> (common::Proc, u16, String) {
    let port = common::free_port();
    let mut console = std::process::Command::new(common::BIN)
        .arg("console")
        .arg("--deployment")
        .arg(cluster.deployment_path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(console.stdout.take().unwrap()),
        &mut first_line,
    )
    .unwrap();
    let url = first_line
        .trim()
        .strip_prefix("console: ")
        .unwrap_or_else(|| panic!("no URL printed: {first_line:?}"))
        .to_string();
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{port}/?key=")),
        "{url}"
    );
    (common::Proc(console), port, url)
}

/// With 30 s windows and Q2's histograms, the deployment console shows Q1's forecasts and
/// the load per house, and Q2's outlier shares: the same figures as the plaintext readings
/// give, drawn in the browser; without the key, nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_console_shows_forecasts_and_outliers() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = common::process_spec(dir.path());
    spec.window_secs = 30;
    let mut cluster = ProcessCluster::write(spec).unwrap();
    cluster.start_all().unwrap();
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let mut sensor = common::start_sensor(&cluster, &["--histograms", "--batch-size", "400"]);
    common::sensor_succeeds(&mut sensor, &cluster, 120).await;

    let (_console, port, url) = start_console(&cluster);
    let api = format!("http://127.0.0.1:{port}/api/analytics");
    assert_eq!(reqwest::get(&api).await.unwrap().status().as_u16(), 401);
    let key = url.split_once("?key=").unwrap().1;
    let got: serde_json::Value = reqwest::get(format!("{api}?key={key}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(got["error"].is_null(), "{got}");

    let (kept_from, from, to) = (
        got["kept_from"].as_u64().unwrap(),
        got["from"].as_u64().unwrap(),
        got["to"].as_u64().unwrap(),
    );
    let readings = common::synthetic_readings();
    let last = readings.iter().map(|r| r.ts).max().unwrap();
    assert!(
        to > last,
        "the whole stream is closed: to {to}, last reading {last}"
    );
    let mut plain = MemorySource::new(windows_from_readings(&readings)).unwrap();
    let want = serde_json::to_value(recent(&mut plain, kept_from, from, to).unwrap()).unwrap();
    let houses = want["houses"].as_array().unwrap();
    assert_eq!(houses.len(), 2);
    assert_eq!(got["houses"].as_array().unwrap().len(), 2);
    for (got, want) in got["houses"].as_array().unwrap().iter().zip(houses) {
        assert_eq!(got["house"], want["house"]);
        assert_eq!(got["outliers"], want["outliers"], "house {}", want["house"]);
        for series in ["forecast", "actual"] {
            let (g, w) = (
                got[series].as_array().unwrap(),
                want[series].as_array().unwrap(),
            );
            assert!(!w.is_empty(), "house {} has no {series}", want["house"]);
            assert_eq!(g.len(), w.len(), "house {} {series}", want["house"]);
            for (g, w) in g.iter().zip(w) {
                assert_eq!(g[0], w[0]);
                let (g, w) = (g[1].as_f64().unwrap(), w[1].as_f64().unwrap());
                assert!(
                    (g - w).abs() < 1e-6,
                    "house {} {series}: {g} W, readings give {w} W",
                    want["house"]
                );
            }
        }
    }

    let Some(browser) = chromium() else {
        eprintln!("SKIPPED the browser part of the analytics console: no chromium");
        return;
    };
    let dom = rendered(browser, &url);
    assert!(
        dom.contains("id=\"forecast-0\"") && dom.contains("id=\"forecast-1\""),
        "{dom}"
    );
    let row = &dom[dom.find("id=\"outliers-1\"").expect("house 1's outliers")..];
    let plugs = want["houses"][1]["outliers"][0]["plugs"].as_u64().unwrap();
    assert!(
        row[..row.find("</tr>").unwrap()].contains(&format!(" of {plugs} (")),
        "{row}"
    );
}
