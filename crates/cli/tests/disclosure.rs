//! Disclosure decided at the clouds: each attack a collector could mount with answers it is
//! given is refused (403 naming the rule) or withheld at every cloud alike, the owner still sees
//! its own plugs, and every disclosure lands in each cloud's audit log.

mod common;

use mcloud::cluster::LocalCluster;
use mcloud_core::auth::app::{AppToken, Attenuation};
use mcloud_core::wire::{ComputeResponse, RangeSpec};
use mcloud_core::{GroupKey, Metric, Reading};
use std::collections::BTreeSet;
use std::time::Duration;

/// An hour boundary: the other-users scope sees hour blocks at 60 s windows.
const T0: u64 = 1_377_986_400;

/// House 3: household 0 has 4 plugs, household 1 one plug; house 4: one household of 6 plugs.
/// Every plug reads once a minute for an hour.
fn readings() -> Vec<Reading> {
    let plugs = (0..4)
        .map(|p| (3, 0, p))
        .chain([(3, 1, 0)])
        .chain((0..6).map(|p| (4, 0, p)));
    let mut out = Vec::new();
    for (house, household, plug) in plugs {
        for minute in 0..60 {
            out.push(Reading {
                id: out.len() as u64,
                ts: T0 + minute * 60 + 7,
                value: 1000 + plug as u64,
                metric: Metric::Load,
                group: GroupKey {
                    house,
                    household,
                    plug,
                },
            });
        }
    }
    out
}

/// Status, stable code, and the COMPUTE answer if there is one.
async fn ask(
    http: &reqwest::Client,
    url: &str,
    body: Option<Vec<u8>>,
) -> (u16, String, Option<Vec<u8>>) {
    let request = match body {
        Some(b) => http.post(url).body(b),
        None => http.get(url),
    };
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        return (
            status,
            String::new(),
            Some(r.bytes().await.unwrap().to_vec()),
        );
    }
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (
        status,
        body["code"].as_str().unwrap_or("").to_string(),
        None,
    )
}

/// The same request at every cloud: every cloud must answer alike.
async fn at_every_cloud(
    cluster: &LocalCluster,
    token: &AppToken,
    query: &str,
    body: Option<Vec<u8>>,
) -> (u16, String, Vec<ComputeResponse>) {
    let http = cluster.app_client(token).unwrap();
    let mut outcomes = Vec::new();
    let mut answers = Vec::new();
    for cloud in cluster.cloud_urls() {
        let (status, code, bytes) = ask(&http, &format!("{cloud}{query}"), body.clone()).await;
        if let (Some(bytes), false) = (bytes, query.starts_with("/v1/range")) {
            answers.push(postcard::from_bytes::<ComputeResponse>(&bytes).unwrap());
        }
        outcomes.push((status, code));
    }
    assert!(
        outcomes.windows(2).all(|w| w[0] == w[1]),
        "clouds disagree on {query}: {outcomes:?}"
    );
    let (status, code) = outcomes.remove(0);
    (status, code, answers)
}

/// (house, household, plug) of every revealed cell, identical at every cloud.
fn cells(answers: &[ComputeResponse]) -> BTreeSet<(u32, Option<u32>, Option<u32>)> {
    let per_cloud: Vec<BTreeSet<_>> = answers
        .iter()
        .map(|a| {
            a.ready
                .iter()
                .flat_map(|w| w.groups.iter())
                .map(|g| (g.group.house, g.group.household, g.group.plug))
                .collect()
        })
        .collect();
    assert!(per_cloud.windows(2).all(|w| w[0] == w[1]), "{per_cloud:?}");
    per_cloud.into_iter().next().unwrap_or_default()
}

/// Cloud `party`'s audit log as its administrator reads it, filtered by `query`.
async fn audit_log(
    cluster: &LocalCluster,
    party: u16,
    query: &str,
) -> Vec<mcloud_cloud::audit::Disclosure> {
    let url = format!("{}/v1/audit?{query}", cluster.cloud_urls()[party as usize]);
    let admin = cluster.admin_client(party).unwrap();
    admin.get(&url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clouds_refuse_or_withhold_every_attack_and_log_every_disclosure() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::cluster(dir.path(), 3, Default::default()).await;
    common::commit_and_close(&cluster, readings(), T0 + 3600).await;
    // The owner's collector waits until the hour is computable everywhere.
    let owner = cluster.owner_token([3, 4]).unwrap();
    let revealed = cluster
        .collector_as(&owner)
        .unwrap()
        .collect_when_ready(
            &mcloud_collector::Query {
                from: T0,
                to: T0 + 3600,
                level: mcloud_core::GroupLevel::Plug,
                min_count: 1,
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(revealed.not_ready.is_empty(), "{:?}", revealed.not_ready);
    // The owner sees its own plugs, every window.
    assert_eq!(revealed.windows.len(), 60);
    assert_eq!(revealed.windows[0].groups.len(), 11);

    let collector = cluster.app_token().unwrap();
    let hour = format!("from={T0}&to={}", T0 + 3600);

    // 1. Per-plug answers, added across clouds, gave every reading: no plug leaves a cloud for
    // anyone but its owner.
    let (status, code, _) = at_every_cloud(
        &cluster,
        &collector,
        &format!("/v1/compute?{hour}&level=plug"),
        None,
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "policy_level"));

    // 2. A histogram "range of an hour" made of one real window and empty ones: histograms
    // and per-plug ranges are the owner's only.
    let padded = postcard::to_stdvec(&vec![RangeSpec {
        from: T0 - 3540,
        to: T0 + 60,
        histograms: true,
    }])
    .unwrap();
    let (status, code, _) = at_every_cloud(&cluster, &collector, "/v1/range", Some(padded)).await;
    assert_eq!((status, code.as_str()), (403, "policy_level"));

    // 3. A house minus its households: house 3 (5 plugs) is revealed, but neither of its
    // households, since house 3 minus household 0 (4 plugs, too few anyway) would be
    // household 1's single plug. House 4 is one household of 6: both levels show it.
    let (status, _, answers) = at_every_cloud(
        &cluster,
        &collector,
        &format!("/v1/compute?{hour}&level=house"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        cells(&answers),
        BTreeSet::from([(3, None, None), (4, None, None)])
    );
    let (status, _, answers) = at_every_cloud(
        &cluster,
        &collector,
        &format!("/v1/compute?{hour}&level=household"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(cells(&answers), BTreeSet::from([(4, Some(0), None)]));
    assert!(answers.iter().all(|a| a.ready[0].withheld == 2));
    // One hour block, not sixty windows.
    assert_eq!(answers[0].ready.len(), 1);
    assert_eq!(
        answers[0].ready[0].window.end - answers[0].ready[0].window.start,
        3600
    );

    // 4. Two overlapping ranges that differ by one window: ranges start and end on blocks.
    let shifted = format!("/v1/compute?from={}&to={}&level=house", T0 + 60, T0 + 3660);
    let (status, code, _) = at_every_cloud(&cluster, &collector, &shifted, None).await;
    assert_eq!((status, code.as_str()), (403, "policy_stride"));

    // 5. One principal sees one cell at most 8 times (the other-users scope's max_reveals).
    let counter = collector
        .attenuate(
            &cluster.authority().tokens.root(),
            &Attenuation {
                app: Some("counter".into()),
                ..Attenuation::default()
            },
        )
        .unwrap();
    let by_house = format!("/v1/compute?{hour}&level=house");
    for _ in 0..8 {
        let (status, _, _) = at_every_cloud(&cluster, &counter, &by_house, None).await;
        assert_eq!(status, 200);
    }
    let (status, code, _) = at_every_cloud(&cluster, &counter, &by_house, None).await;
    assert_eq!((status, code.as_str()), (403, "policy_reveals"));

    // The owner's per-plug ranges and histograms still flow.
    let owner_http = cluster.app_client(&owner).unwrap();
    let range = postcard::to_stdvec(&vec![RangeSpec {
        from: T0,
        to: T0 + 3600,
        histograms: true,
    }])
    .unwrap();
    let (status, _, _) = ask(
        &owner_http,
        &format!("{}/v1/range", cluster.cloud_urls()[0]),
        Some(range),
    )
    .await;
    assert_eq!(status, 200);

    // Every disclosure is in every cloud's audit log, for that party's administrators only.
    for party in 0..3u16 {
        let log = audit_log(&cluster, party, "user=collector&app=counter").await;
        assert_eq!(
            log.len(),
            8,
            "party {party}: refused requests are not disclosures"
        );
        let last = &log[0];
        assert_eq!(last.houses, vec![3, 4]);
        assert_eq!(last.cells, 2);
        assert_eq!(last.min_contributors, 5);
        assert_eq!(last.chain.len(), 2, "root block and the app's attenuation");
        assert_eq!((last.from, last.to), (T0, T0 + 3600));
    }
    // The owner's reads are logged too (committed in groups, and settled before a read).
    let log = audit_log(&cluster, 0, "user=owner").await;
    assert!(
        log.iter()
            .any(|d| d.query == "histograms" && d.houses == vec![3, 4]),
        "{log:?}"
    );
    // `mcloud audit` reads the same log with the deployment's administrator certificate.
    let deployment = cluster.write_deployment().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["audit", "--deployment"])
        .arg(&deployment)
        .args(["--app", "counter", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<mcloud_cloud::audit::Disclosure> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    assert!(lines
        .iter()
        .all(|d| d.user == "collector" && d.query == "compute"));
    // The log is durable: a restarted cloud still has every entry, and still counts reveals.
    let mut cluster = cluster;
    cluster.stop_cloud(0).await;
    cluster.restart_cloud(0).await.unwrap();
    assert_eq!(audit_log(&cluster, 0, "app=counter").await.len(), 8);
    let http = cluster.app_client(&counter).unwrap();
    let (status, code, _) = ask(
        &http,
        &format!("{}{by_house}", cluster.cloud_urls()[0]),
        None,
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "policy_reveals"));
    // No certificate, or a malformed filter: refused by name, nothing read.
    let (status, code, _) = ask(
        &cluster.http(),
        &format!("{}/v1/audit", cluster.cloud_urls()[0]),
        None,
    )
    .await;
    assert_eq!(status, 401, "{code}");
    let (status, code, _) = ask(
        &cluster.admin_client(0).unwrap(),
        &format!("{}/v1/audit?limit=-1", cluster.cloud_urls()[0]),
        None,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "bad_request"));
    let wrong_admin = cluster.admin_client(1).unwrap();
    let (status, code, _) = ask(
        &wrong_admin,
        &format!("{}/v1/audit", cluster.cloud_urls()[0]),
        None,
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "wrong_party"));
    let (status, _, _) = ask(
        &cluster.app_client(&owner).unwrap(),
        &format!("{}/v1/audit", cluster.cloud_urls()[0]),
        None,
    )
    .await;
    assert!(status == 401 || status == 403, "{status}");
    cluster.shutdown().await;
}

/// With differential privacy on for other users, every cloud adds its own noise to what it
/// reveals, the collector decodes the noisy totals near the exact ones, and each cloud refuses
/// a principal whose ε budget is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_privacy_adds_noise_and_spends_a_budget_at_every_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let mut disclosure = mcloud_core::disclosure::DisclosurePolicy::default();
    disclosure.other.dp = Some(mcloud_core::disclosure::DpRules {
        epsilon: 1.0,
        budget: 2.0,
        max_value: 10_000 * mcloud_core::SCALE,
    });
    let options = mcloud::cluster::ClusterOptions {
        disclosure,
        ..Default::default()
    };
    let cluster = common::cluster(dir.path(), 3, options).await;
    common::commit_and_close(&cluster, readings(), T0 + 3600).await;
    let owner = cluster
        .collector_as(&cluster.owner_token([3, 4]).unwrap())
        .unwrap();
    let query = mcloud_collector::Query {
        from: T0,
        to: T0 + 3600,
        level: mcloud_core::GroupLevel::House,
        min_count: 1,
    };
    // The owner's exact figures, once every window is computable.
    let exact = owner
        .collect_when_ready(&query, Duration::from_secs(30))
        .await
        .unwrap();
    let exact_sum: u128 = exact
        .windows
        .iter()
        .flat_map(|w| &w.groups)
        .filter(|g| g.group.house == 4)
        .map(|g| g.totals.sum)
        .sum();
    let exact_count: u64 = exact
        .windows
        .iter()
        .flat_map(|w| &w.groups)
        .filter(|g| g.group.house == 4)
        .map(|g| g.totals.count)
        .sum();
    assert_eq!(exact_count, 360);

    let other = cluster.collector_as(&cluster.app_token().unwrap()).unwrap();
    let mut sums = Vec::new();
    for _ in 0..2 {
        let noisy = other.collect(&query).await.unwrap();
        let house4 = noisy.windows[0]
            .groups
            .iter()
            .find(|g| g.group.house == 4)
            .expect("house 4 revealed")
            .totals;
        // Count noise has scale 3 per cloud; sum noise 3 × 10 kW per cloud.
        assert!(house4.count.abs_diff(exact_count) < 200, "{house4:?}");
        let off = (house4.sum as f64 - exact_sum as f64).abs();
        assert!(off < 3.0 * 30.0 * 10_000_000.0, "sum off by {off}");
        sums.push((house4.count, house4.sum));
    }
    // A noisy sum below zero reveals as 0, so both sums may be 0: the counts tell apart too.
    assert_ne!(sums[0], sums[1], "fresh noise on every request");
    assert_ne!(sums[0], (exact_count, exact_sum));
    // The budget (2) allows two requests of ε = 1; the third is refused at every cloud.
    let (status, code, _) = at_every_cloud(
        &cluster,
        &cluster.app_token().unwrap(),
        &format!("/v1/compute?from={T0}&to={}&level=house", T0 + 3600),
        None,
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "policy_budget"));
    cluster.shutdown().await;
}
