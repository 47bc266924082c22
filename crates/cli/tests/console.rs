//! The web console in a real headless browser (Debian's `chromium`): while a sensor uploads
//! to a three-party deployment of `mcloud node` processes, a cloud's `/console` page loads,
//! runs its script against the node's status and metrics, and shows numbers that move from
//! one load to the next; a voter's shows its Raft partition. Prints SKIPPED without chromium.

mod common;

use mcloud::processes::ProcessCluster;
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
    let _console = common::Proc(console);
    let url = first_line
        .trim()
        .strip_prefix("console: ")
        .unwrap_or_else(|| panic!("no URL printed: {first_line:?}"))
        .to_string();
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{port}/?key=")),
        "{url}"
    );

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
