//! The attacks an outsider could run against an unauthenticated deployment, replayed against
//! a real cluster (in-process TLS servers on loopback): each is now refused with 401 or 403
//! and a stable code, and the legitimate path still works.

mod common;

use mcloud::cluster::{ClusterSpec, LocalCluster, GATEWAY};
use mcloud_core::auth::app::Attenuation;
use mcloud_core::auth::peer::{PeerIdentity, Role};
use mcloud_core::auth::sensor::SensorScope;
use mcloud_core::reading::GroupLevel;
use std::time::Duration;

/// A three-party cluster in `dir`, one-minute windows, with `grace_secs` of grace.
async fn three_parties(dir: &std::path::Path, grace_secs: u64) -> LocalCluster {
    LocalCluster::start(ClusterSpec {
        parties: 3,
        window_secs: 60,
        grace_secs,
        dir: dir.to_path_buf(),
    })
    .await
    .unwrap()
}

/// A load reading of plug 0 of household 0 of `house`.
fn reading(id: u64, ts: u64, house: u32) -> mcloud_core::Reading {
    mcloud_core::Reading {
        id,
        ts,
        value: 1000,
        metric: mcloud_core::Metric::Load,
        group: mcloud_core::GroupKey {
            house,
            household: 0,
            plug: 0,
        },
    }
}

async fn status_and_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (status, body["code"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outsiders_and_overreaching_members_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_parties(dir.path(), 60).await;
    let anonymous = cluster.http();
    let cloud = &cluster.cloud_urls()[0];
    let catalog = cluster.catalog_url();

    // No credential at all: COMPUTE, RANGE, UPLOAD, watermark, flags, Raft, membership, maps.
    for (method, url, code) in [
        (
            "GET",
            format!("{cloud}/v1/compute?level=plug"),
            "credential_missing",
        ),
        (
            "GET",
            format!("{cloud}/v1/range?from=0&to=60"),
            "credential_missing",
        ),
        ("POST", format!("{cloud}/v1/upload"), "credential_missing"),
        (
            "POST",
            format!("{cloud}/v1/watermark"),
            "credential_missing",
        ),
        (
            "POST",
            format!("{catalog}/v1/flags/create"),
            "credential_missing",
        ),
        (
            "POST",
            format!("{catalog}/v1/flags/get"),
            "credential_missing",
        ),
        (
            "POST",
            format!("{catalog}/v1/raft/0/append"),
            "peer_certificate_missing",
        ),
        (
            "POST",
            format!("{catalog}/v1/catalog/0/membership"),
            "peer_certificate_missing",
        ),
        (
            "POST",
            format!("{catalog}/v1/assignments/0"),
            "peer_certificate_missing",
        ),
    ] {
        let request = if method == "GET" {
            anonymous.get(&url)
        } else {
            anonymous.post(&url).body(vec![1, 2, 3])
        };
        let answer = status_and_code(request.send().await.unwrap()).await;
        assert_eq!(answer, (401, code.to_string()), "{method} {url}");
    }

    // A sensor session of another party, and a forged one.
    let sessions = mcloud_client::SensorSessions::new(
        cluster.sensor_credentials(GATEWAY),
        cluster.cloud_endpoints().unwrap(),
    );
    let party1 = sessions.header(1).await.unwrap();
    let answer = anonymous
        .post(format!("{cloud}/v1/watermark"))
        .header("authorization", &party1)
        .body(vec![0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_code(answer).await, (401, "wrong_party".into()));
    let answer = anonymous
        .post(format!("{cloud}/v1/watermark"))
        .header("authorization", "Sensor 00ff")
        .send()
        .await
        .unwrap();
    assert_eq!(
        status_and_code(answer).await,
        (401, "credential_malformed".into())
    );

    // A sensor scoped to house 3 reports another house, and another sensor's flags.
    let house3 = SensorScope {
        sensor: 9,
        house: Some(3),
        plugs: None,
    };
    let uploader = cluster
        .uploader_for(house3.clone(), Duration::from_secs(5))
        .unwrap();
    let other_house = reading(1, 1_377_986_401, 4);
    let outcome = uploader
        .transact(
            &mcloud_client::PlainBatch::new(9, vec![other_house]),
            mcloud_client::Fate::Complete,
        )
        .await
        .unwrap();
    assert!(
        matches!(&outcome, mcloud_client::Outcome::Rejected(m) if m.contains("out_of_scope")),
        "{outcome:?}"
    );
    let own = cluster.sensor_credentials(house3);
    let own_sessions = mcloud_client::SensorSessions::new(own, cluster.cloud_endpoints().unwrap());
    let header = own_sessions.header(0).await.unwrap();
    let someone_elses = mcloud_core::wire::FlagIds {
        ids: vec![mcloud_core::BatchId::of_sensor(1)],
    };
    let answer = anonymous
        .post(format!("{catalog}/v1/flags/set"))
        .header("authorization", header)
        .body(postcard::to_stdvec(&someone_elses).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        status_and_code(answer).await,
        (403, "not_your_batch".into())
    );

    // An app token narrowed to houses only may not ask for plugs; the collector's may.
    let token = cluster.app_token().unwrap();
    let houses_only = token
        .attenuate(
            &cluster.authority().tokens.root(),
            &Attenuation {
                levels: Some(vec![GroupLevel::House]),
                ..Attenuation::default()
            },
        )
        .unwrap();
    let narrowed = cluster.app_client(&houses_only).unwrap();
    let answer = narrowed
        .get(format!("{cloud}/v1/compute?level=plug"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        status_and_code(answer).await,
        (403, "token_out_of_scope".into())
    );
    let answer = narrowed
        .get(format!("{cloud}/v1/compute?level=house"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);

    // A cloud's certificate may write only its own bucket map, and never membership.
    let cloud1 = cluster.cloud_catalog_client(1).unwrap();
    let assignment = mcloud_catalog::raft::Assignment {
        epoch: 1,
        owners: vec![0; 4],
    };
    let refused = cloud1.put_assignment(0, &assignment).await.unwrap_err();
    assert!(refused.to_string().contains("not_your_map"), "{refused}");

    // An administrator of party 2 may read maps.
    let admin = cluster.admin_client(2).unwrap();
    let answer = admin
        .get(format!("{catalog}/v1/assignments/0"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    // A certificate from a CA that is not one of the deployment's parties gets nowhere.
    let stranger = mcloud_core::auth::authority::Authority::generate(3)
        .unwrap()
        .node(
            PeerIdentity {
                party: 0,
                role: Role::Admin,
                id: 0,
            },
            &[],
        )
        .unwrap();
    let stranger = stranger
        .identity
        .client(&cluster.authority().party_cas())
        .unwrap();
    let answer = stranger
        .get(format!("{catalog}/v1/assignments/0"))
        .send()
        .await;
    assert!(
        answer.is_err() || answer.is_ok_and(|a| a.status().as_u16() == 401),
        "a stranger's certificate was accepted"
    );
    cluster.shutdown().await;
}

/// Party 1 runs a server with a certificate from its own CA on the address a sensor knows as
/// cloud 0: the sensor, which pins party 0's CA for cloud 0, never sends it a byte of data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_party_can_pose_as_another_partys_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_parties(dir.path(), 60).await;
    let impostor = cluster
        .authority()
        .node(
            PeerIdentity {
                party: 1,
                role: Role::Cloud,
                id: 0,
            },
            &mcloud_core::tls::default_names(),
        )
        .unwrap();
    let router = axum::Router::new().route(
        "/v1/session/challenge",
        axum::routing::post(|| async { "a challenge of party 1's choosing" }),
    );
    let fake = mcloud_core::server::serve(
        router,
        "127.0.0.1:0".parse().unwrap(),
        &impostor.identity,
        impostor.roots().unwrap(),
    )
    .await
    .unwrap();
    let mut clouds = cluster.cloud_endpoints().unwrap();
    clouds[0].url = fake.url();
    let sessions =
        mcloud_client::SensorSessions::new(cluster.sensor_credentials(GATEWAY), clouds.clone());
    let refused = sessions.header(0).await.unwrap_err();
    assert!(
        matches!(refused, mcloud_core::http::CallError::Transport { .. }),
        "{refused}"
    );
    // The same server is trusted by a client of party 1, so the refusal is the pinning.
    assert!(sessions.header(1).await.is_ok());
    fake.shutdown().await;
    cluster.shutdown().await;
}

/// A revoked token stops counting at every cloud within moments; the token it was narrowed
/// from still counts, and only an administrator may revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_everywhere_and_its_parent_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_parties(dir.path(), 60).await;
    let root = cluster.authority().tokens.root();
    let parent = cluster.app_token().unwrap();
    let child = parent
        .attenuate(
            &root,
            &Attenuation {
                app: Some("plotter".into()),
                ..Attenuation::default()
            },
        )
        .unwrap();
    let ask = |token: mcloud_core::auth::app::AppToken| {
        let http = cluster.app_client(&token).unwrap();
        let clouds = cluster.cloud_urls();
        async move {
            let mut answers = Vec::new();
            for cloud in clouds {
                let r = http
                    .get(format!("{cloud}/v1/compute?level=house"))
                    .send()
                    .await
                    .unwrap();
                answers.push(status_and_code(r).await);
            }
            answers
        }
    };
    assert!(ask(child.clone()).await.iter().all(|a| a.0 == 200));
    let last = child.revocation_ids(&root).unwrap().pop().unwrap();

    // A cloud's certificate may not revoke; an administrator's may.
    let by_cloud = cluster
        .cloud_catalog_client(0)
        .unwrap()
        .revoke(vec![last.clone()])
        .await
        .unwrap_err();
    assert!(by_cloud.to_string().contains("wrong_role"), "{by_cloud}");
    let malformed = cluster
        .admin_catalog_client(0)
        .unwrap()
        .revoke(vec!["not hex".into()])
        .await
        .unwrap_err();
    assert!(malformed.to_string().contains("hex"), "{malformed}");
    cluster
        .admin_catalog_client(0)
        .unwrap()
        .revoke(vec![last])
        .await
        .unwrap();

    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answers = ask(child.clone()).await;
        if answers
            .iter()
            .all(|a| *a == (401, "token_revoked".to_string()))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "still served: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ask(parent).await.iter().all(|a| a.0 == 200));
    cluster.shutdown().await;
}

/// What a refused request must not change: every cloud's batches, windows and watermark, every
/// voter's flags, term and membership, the bucket maps and the revocations.
async fn state(cluster: &LocalCluster) -> Vec<serde_json::Value> {
    let public = cluster.http();
    let mut seen = Vec::new();
    for url in cluster.cloud_urls() {
        let s: serde_json::Value = public
            .get(format!("{url}/v1/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.push(serde_json::json!([
            s["watermark"],
            s["closed_before"],
            s["windows"],
            s["batches"]
        ]));
    }
    for url in cluster.catalog_urls() {
        let s: serde_json::Value = public
            .get(format!("{url}/v1/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for p in s["partitions"].as_array().unwrap() {
            seen.push(serde_json::json!([
                p["term"],
                p["voters"],
                p["learners"],
                p["flags"]
            ]));
        }
    }
    let admin = cluster.admin_catalog_client(0).unwrap();
    for party in 0..3 {
        let map = admin.get_assignment(party).await.unwrap();
        seen.push(serde_json::json!(map.map(|m| m.epoch)));
    }
    seen.push(serde_json::json!(admin.revocations().await.unwrap()));
    seen
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Sensor,
    App,
    Voter,
    Admin,
    Map,
}

/// Every route × every wrong credential that applies to it: 401 or 403 with the code that names
/// the reason, and nothing changes anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_refuses_every_wrong_credential_and_changes_nothing() {
    use mcloud_core::auth::app::TokenAuthority;
    use mcloud_core::auth::sensor::{SessionIssuer, SessionRequest};
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_parties(dir.path(), 60).await;
    // Some real state first, so that "nothing changed" compares something.
    let batch = mcloud_client::PlainBatch::new(GATEWAY.sensor, vec![reading(1, 1_377_986_401, 3)]);
    let uploader = cluster.uploader(Duration::from_secs(30)).unwrap();
    assert_eq!(
        uploader
            .transact(&batch, mcloud_client::Fate::Complete)
            .await
            .unwrap(),
        mcloud_client::Outcome::Committed
    );
    let upload_body = uploader.encode_shares(&batch).unwrap().swap_remove(0);

    // Sensor credentials, all for party 0 (cloud 0 and voter 1) unless named otherwise.
    let now = mcloud_core::auth::now_secs();
    let party0 = &cluster.authority().parties[0].sensors;
    let issuer = SessionIssuer::new(party0.clone());
    let session = |scope: SensorScope, at: u64| {
        let key = party0.sensor_key(&scope);
        let req = SessionRequest::answer(scope, issuer.challenge(at), &key);
        issuer.open(&req, at).unwrap().to_header()
    };
    let house3 = SensorScope {
        sensor: 9,
        house: Some(3),
        plugs: None,
    };
    let valid_sensor = session(GATEWAY, now);
    let expired_sensor = session(GATEWAY, now - 2 * 3600);
    let other_sensor = session(house3.clone(), now);
    let party1 = {
        let p1 = &cluster.authority().parties[1].sensors;
        let i1 = SessionIssuer::new(p1.clone());
        let req = SessionRequest::answer(GATEWAY, i1.challenge(now), &p1.sensor_key(&GATEWAY));
        i1.open(&req, now).unwrap().to_header()
    };

    // App tokens.
    let root = cluster.authority().tokens.root();
    let valid_app = cluster.app_token().unwrap();
    let expired_app = cluster
        .authority()
        .tokens
        .issue_collector("collector", now - 10)
        .unwrap();
    let foreign_app = TokenAuthority::generate()
        .issue_collector("collector", now + 3600)
        .unwrap();
    let houses_only = valid_app
        .attenuate(
            &root,
            &Attenuation {
                levels: Some(vec![GroupLevel::House]),
                ..Attenuation::default()
            },
        )
        .unwrap();
    let revoked_app = valid_app
        .attenuate(
            &root,
            &Attenuation {
                app: Some("revoked".into()),
                ..Attenuation::default()
            },
        )
        .unwrap();
    let admin = cluster.admin_catalog_client(0).unwrap();
    admin
        .revoke(vec![revoked_app
            .revocation_ids(&root)
            .unwrap()
            .pop()
            .unwrap()])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Peer certificates.
    let enrol = |party: u16, role: Role, id: u64| {
        let c = cluster
            .authority()
            .node(PeerIdentity { party, role, id }, &[])
            .unwrap();
        c.identity.client(&cluster.authority().party_cas()).unwrap()
    };
    let cloud0 = enrol(0, Role::Cloud, 0);
    let cloud1 = enrol(1, Role::Cloud, 0);
    let voter2 = enrol(1, Role::Voter, 2);
    let admin0 = enrol(0, Role::Admin, 0);
    let anonymous = cluster.http();

    let before = state(&cluster).await;
    let cloud = &cluster.cloud_urls()[0];
    let catalog = cluster.catalog_url();
    let own_flag = postcard::to_stdvec(&mcloud_core::wire::FlagIds {
        ids: vec![batch.id],
    })
    .unwrap();
    let create = postcard::to_stdvec(&mcloud_core::wire::CreateFlagsRequest {
        flags: vec![mcloud_core::wire::CreateFlag {
            id: mcloud_core::BatchId::of_sensor(GATEWAY.sensor),
            ttl_ms: 1000,
            robust: false,
        }],
    })
    .unwrap();
    let watermark = postcard::to_stdvec(&mcloud_core::wire::WatermarkRequest {
        ts: u64::MAX / 2,
        end_of_stream: true,
    })
    .unwrap();
    let map = postcard::to_stdvec(&mcloud_catalog::Assignment {
        epoch: u64::MAX,
        owners: vec![0; 4],
    })
    .unwrap();
    let revocation = postcard::to_stdvec(&vec!["ab".to_string()]).unwrap();
    let routes: Vec<(Kind, &str, String, Vec<u8>)> = vec![
        (
            Kind::Sensor,
            "POST",
            format!("{cloud}/v1/upload"),
            upload_body,
        ),
        (
            Kind::Sensor,
            "POST",
            format!("{cloud}/v1/watermark"),
            watermark,
        ),
        (
            Kind::Sensor,
            "POST",
            format!("{catalog}/v1/flags/create"),
            create,
        ),
        (
            Kind::Sensor,
            "POST",
            format!("{catalog}/v1/flags/set"),
            own_flag.clone(),
        ),
        (
            Kind::App,
            "GET",
            format!("{cloud}/v1/compute?level=plug"),
            vec![],
        ),
        (
            Kind::App,
            "GET",
            format!("{cloud}/v1/range?from=0&to=60"),
            vec![],
        ),
        (
            Kind::Voter,
            "POST",
            format!("{catalog}/v1/raft/0/append"),
            vec![0],
        ),
        (
            Kind::Voter,
            "POST",
            format!("{catalog}/v1/raft/0/vote"),
            vec![0],
        ),
        (
            Kind::Voter,
            "POST",
            format!("{catalog}/v1/raft/0/snapshot"),
            vec![0],
        ),
        (
            Kind::Voter,
            "POST",
            format!("{catalog}/v1/catalog/0/local"),
            vec![0],
        ),
        (
            Kind::Admin,
            "POST",
            format!("{catalog}/v1/catalog/0/membership"),
            vec![0],
        ),
        (
            Kind::Admin,
            "POST",
            format!("{catalog}/v1/revocations"),
            revocation,
        ),
        (
            Kind::Map,
            "POST",
            format!("{catalog}/v1/assignments/0"),
            map,
        ),
    ];
    let send =
        |http: &reqwest::Client, method: &str, url: &str, body: &[u8], auth: Option<String>| {
            let mut r = if method == "GET" {
                http.get(url)
            } else {
                http.post(url).body(body.to_vec())
            };
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.send()
        };
    let mut checked = 0;
    for (kind, method, url, body) in &routes {
        // (credential, client, header, expected status, expected code)
        let mut cases: Vec<(&str, &reqwest::Client, Option<String>, u16, &str)> = Vec::new();
        match kind {
            Kind::Sensor => {
                cases.push(("none", &anonymous, None, 401, "credential_missing"));
                cases.push((
                    "malformed",
                    &anonymous,
                    Some("Sensor zz".into()),
                    401,
                    "credential_malformed",
                ));
                cases.push((
                    "expired",
                    &anonymous,
                    Some(expired_sensor.clone()),
                    401,
                    "session_expired",
                ));
                cases.push((
                    "another party's",
                    &anonymous,
                    Some(party1.clone()),
                    401,
                    "wrong_party",
                ));
                cases.push((
                    "an app's",
                    &anonymous,
                    Some(format!("Bearer {}", valid_app.0)),
                    401,
                    "credential_missing",
                ));
                // The watermark is not a sensor's own yet (see README, Known limits).
                if !url.contains("watermark") {
                    cases.push((
                        "another sensor's",
                        &anonymous,
                        Some(other_sensor.clone()),
                        403,
                        "not_your_batch",
                    ));
                }
            }
            Kind::App => {
                cases.push(("none", &anonymous, None, 401, "credential_missing"));
                cases.push((
                    "malformed",
                    &anonymous,
                    Some("Bearer not-a-token".into()),
                    401,
                    "token_malformed",
                ));
                cases.push((
                    "expired",
                    &anonymous,
                    Some(format!("Bearer {}", expired_app.0)),
                    401,
                    "token_expired",
                ));
                cases.push((
                    "revoked",
                    &anonymous,
                    Some(format!("Bearer {}", revoked_app.0)),
                    401,
                    "token_revoked",
                ));
                cases.push((
                    "another deployment's",
                    &anonymous,
                    Some(format!("Bearer {}", foreign_app.0)),
                    401,
                    "token_malformed",
                ));
                cases.push((
                    "a sensor's",
                    &anonymous,
                    Some(valid_sensor.clone()),
                    401,
                    "credential_missing",
                ));
                cases.push((
                    "beyond its scope",
                    &anonymous,
                    Some(format!("Bearer {}", houses_only.0)),
                    403,
                    "token_out_of_scope",
                ));
            }
            Kind::Voter | Kind::Admin | Kind::Map => {
                cases.push(("none", &anonymous, None, 401, "peer_certificate_missing"));
                cases.push((
                    "a sensor session",
                    &anonymous,
                    Some(valid_sensor.clone()),
                    401,
                    "peer_certificate_missing",
                ));
                match kind {
                    Kind::Voter => {
                        cases.push(("a cloud's", &cloud0, None, 403, "wrong_role"));
                        cases.push(("an administrator's", &admin0, None, 403, "wrong_role"));
                    }
                    Kind::Admin => {
                        cases.push(("a cloud's", &cloud0, None, 403, "wrong_role"));
                    }
                    _ => {
                        cases.push(("another party's cloud", &cloud1, None, 403, "not_your_map"));
                        cases.push(("a voter's", &voter2, None, 403, "wrong_role"));
                    }
                }
            }
        }
        for (what, client, auth, status, code) in cases {
            let answer = send(client, method, url, body, auth).await.unwrap();
            assert_eq!(
                status_and_code(answer).await,
                (status, code.to_string()),
                "{method} {url} with {what}"
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "{checked} cases");
    assert_eq!(
        state(&cluster).await,
        before,
        "a refused request changed state"
    );

    // The valid credentials pass the gate (what they then ask is checked as before).
    let answer = send(
        &anonymous,
        "POST",
        &format!("{catalog}/v1/flags/get"),
        &own_flag,
        Some(valid_sensor),
    )
    .await
    .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let answer = send(
        &anonymous,
        "GET",
        &format!("{cloud}/v1/compute?level=house"),
        &[],
        Some(format!("Bearer {}", valid_app.0)),
    )
    .await
    .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    cluster.shutdown().await;
}

/// Two sensors report into the same window: the fast one's end of stream does not close it
/// while the slow one still reports progress before it, so the slow one's later batch counts;
/// once the slow one ends too, the window is closed to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_sensor_cannot_close_a_window_on_a_slow_one() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_parties(dir.path(), 0).await;
    let t0 = 1_377_986_400;
    let slow_scope = SensorScope {
        sensor: 9,
        house: Some(3),
        plugs: None,
    };
    let fast = cluster.uploader(Duration::from_secs(30)).unwrap();
    let slow = cluster
        .uploader_for(slow_scope.clone(), Duration::from_secs(30))
        .unwrap();
    let committed = mcloud_client::Outcome::Committed;
    let batch =
        |sensor: u32, r: mcloud_core::Reading| mcloud_client::PlainBatch::new(sensor, vec![r]);
    assert_eq!(
        fast.transact(
            &batch(GATEWAY.sensor, reading(1, t0 + 1, 1)),
            mcloud_client::Fate::Complete
        )
        .await
        .unwrap(),
        committed
    );
    slow.advance_watermark(t0 + 2, false).await.unwrap();
    fast.advance_watermark(t0 + 5, true).await.unwrap();
    // The window [t0, t0 + 60) is still open for the slow sensor.
    assert_eq!(
        slow.transact(
            &batch(9, reading(2, t0 + 30, 3)),
            mcloud_client::Fate::Complete
        )
        .await
        .unwrap(),
        committed
    );
    slow.advance_watermark(t0 + 31, true).await.unwrap();
    let late = slow
        .transact(
            &batch(9, reading(3, t0 + 40, 3)),
            mcloud_client::Fate::Complete,
        )
        .await
        .unwrap();
    assert!(
        matches!(&late, mcloud_client::Outcome::Missed(_)),
        "{late:?}"
    );
    // Counted as late where an operator looks (metrics, console), at every cloud.
    for party in 0..3 {
        let text = cluster.cloud(party).unwrap().metrics().encode();
        assert!(
            text.contains("mcloud_cloud_batches_total{outcome=\"late\"} 1"),
            "cloud {party}:\n{text}"
        );
    }
    let revealed = cluster
        .collector()
        .unwrap()
        .collect_when_ready(
            &mcloud_collector::Query {
                from: t0,
                to: t0 + 60,
                level: GroupLevel::House,
                min_count: 1,
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(revealed.windows.len(), 1);
    // Both sensors' readings, and not the late one, in the window's load counts.
    let count: u64 = revealed.windows[0]
        .groups
        .iter()
        .filter(|g| g.metric == mcloud_core::Metric::Load)
        .map(|g| g.totals.count)
        .sum();
    assert_eq!(count, 2);
    cluster.shutdown().await;
}

/// Owners' access modifiers: a friend's apps see the owner's houses as aggregates (never per
/// plug, never through RANGE), every user's apps see an owner's houses opened to others, a
/// denied app sees none of the owner's houses, and only the owner's own token sets the rules.
/// Who reaches which house is the point here, so the disclosure policy lets friends and other
/// users see every aggregate of one plug, per window (the `disclosure` tests hold the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_others_and_denied_apps_reach_what_the_owner_says() {
    use mcloud_catalog::raft::AccessRequest;
    let dir = tempfile::tempdir().unwrap();
    let mut disclosure = mcloud_core::disclosure::DisclosurePolicy::default();
    for rules in [&mut disclosure.friend, &mut disclosure.other] {
        rules.min_contributors = 1;
        rules.min_data_windows = 1;
        rules.stride_windows = 1;
        rules.max_reveals = 0;
    }
    let cluster = LocalCluster::start_with(
        ClusterSpec {
            parties: 3,
            window_secs: 60,
            grace_secs: 0,
            dir: dir.path().to_path_buf(),
        },
        mcloud::cluster::ClusterOptions {
            disclosure,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let t0 = 1_377_986_400;
    let readings = (3..=5)
        .map(|h| reading(h as u64, t0 + h as u64, h))
        .collect();
    common::commit_and_close(&cluster, readings, t0 + 10).await;
    // The window is computable at every cloud before anyone looks.
    let revealed = cluster
        .collector()
        .unwrap()
        .collect_when_ready(
            &mcloud_collector::Query {
                from: t0,
                to: t0 + 60,
                level: GroupLevel::House,
                min_count: 1,
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(revealed.windows.len(), 1);

    let tokens = &cluster.authority().tokens;
    let expires = mcloud_core::auth::now_secs() + 3600;
    let alice = tokens.issue_owner("alice", &[3], expires).unwrap();
    let bob = tokens.issue_owner("bob", &[4], expires).unwrap();
    let carol = tokens.issue_owner("carol", &[5], expires).unwrap();
    let dave = tokens.issue_owner("dave", &[], expires).unwrap();
    let named = |token: &mcloud_core::auth::app::AppToken, app: &str| {
        token
            .attenuate(
                &tokens.root(),
                &Attenuation {
                    app: Some(app.into()),
                    ..Attenuation::default()
                },
            )
            .unwrap()
    };
    let bobs_spy = named(&bob, "spy");
    let cloud = cluster.cloud_urls()[1].clone();
    let houses = |token: mcloud_core::auth::app::AppToken, query: &'static str| {
        let http = cluster.app_client(&token).unwrap();
        let url = format!("{cloud}{query}");
        async move {
            let r = http.get(&url).send().await.unwrap();
            if r.status().as_u16() == 403 {
                return Err(status_and_code(r).await.1);
            }
            assert_eq!(r.status().as_u16(), 200, "{url}");
            let bytes = r.bytes().await.unwrap();
            let mut seen = std::collections::BTreeSet::new();
            if query.starts_with("/v1/range") {
                let a: mcloud_core::wire::RangeResponse = postcard::from_bytes(&bytes).unwrap();
                seen.extend(a.plugs.iter().map(|p| p.plug.house));
            } else {
                let a: mcloud_core::wire::ComputeResponse = postcard::from_bytes(&bytes).unwrap();
                for w in &a.ready {
                    seen.extend(w.groups.iter().map(|g| g.group.house));
                }
            }
            Ok(seen.into_iter().collect::<Vec<u32>>())
        }
    };
    let by_house = "/v1/compute?level=house";
    let by_plug = "/v1/compute?level=plug";
    assert_eq!(houses(bob.clone(), by_house).await, Ok(vec![4]));

    // Only the owner's own token sets the rules.
    let set = |token: &mcloud_core::auth::app::AppToken, req: AccessRequest| {
        let http = cluster.app_client(token).unwrap();
        let url = format!("{}/v1/access", cluster.catalog_url());
        async move {
            let r = http
                .post(&url)
                .body(postcard::to_stdvec(&req).unwrap())
                .send()
                .await
                .unwrap();
            status_and_code(r).await
        }
    };
    let rules = |friends: &[&str], others: bool, denied: &[&str]| AccessRequest {
        friends: friends.iter().map(|f| f.to_string()).collect(),
        others,
        denied_apps: denied.iter().map(|d| d.to_string()).collect(),
    };
    let refused = set(&named(&alice, "plotter"), rules(&["mallory"], true, &[])).await;
    assert_eq!(refused, (403, "not_an_owner".into()));
    let refused = set(&cluster.app_token().unwrap(), rules(&[], true, &[])).await;
    assert_eq!(refused, (403, "not_an_owner".into()));
    let refused = set(&alice, rules(&[&"x".repeat(65)], false, &[])).await;
    assert_eq!(refused.0, 400);
    assert_eq!(set(&alice, rules(&["bob"], false, &["spy"])).await.0, 200);
    assert_eq!(set(&carol, rules(&[], true, &[])).await.0, 200);

    let until = std::time::Instant::now() + Duration::from_secs(10);
    while houses(bob.clone(), by_house).await != Ok(vec![3, 4, 5]) {
        assert!(
            std::time::Instant::now() < until,
            "the rules never reached the cloud"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Aggregates only: per plug and through RANGE, bob sees his own house.
    assert_eq!(houses(bob.clone(), by_plug).await, Ok(vec![4]));
    let range = "/v1/range?from=1377986400&to=1377986460";
    assert_eq!(houses(bob.clone(), range).await, Ok(vec![4]));
    // Alice denies the app "spy": bob's spy sees carol's (open) house and its own, not alice's.
    assert_eq!(houses(bobs_spy, by_house).await, Ok(vec![4, 5]));
    assert_eq!(houses(named(&alice, "spy"), by_house).await, Ok(vec![5]));
    // Dave is nobody's friend: only carol's house, which is open to everyone, and never a plug.
    assert_eq!(houses(dave.clone(), by_house).await, Ok(vec![5]));
    assert_eq!(houses(dave, by_plug).await, Err("policy_level".into()));
    assert_eq!(houses(alice, by_plug).await, Ok(vec![3]));
    // The deployment's collector owns no house: aggregates of every house, no plug.
    let collector = cluster.app_token().unwrap();
    assert_eq!(houses(collector.clone(), by_house).await, Ok(vec![3, 4, 5]));
    assert_eq!(
        houses(collector.clone(), by_plug).await,
        Err("policy_level".into())
    );
    assert_eq!(houses(collector, range).await, Err("policy_level".into()));

    // Plugs and metrics narrow too: a plug-narrowed token sees that plug's own figures, never
    // a house aggregate other plugs are part of.
    let owner = cluster.owner_token([3, 4, 5]).unwrap();
    let narrowed = |plugs: &[u32], metrics: &[mcloud_core::Metric]| {
        owner
            .attenuate(
                &tokens.root(),
                &Attenuation {
                    plugs: Some(plugs.to_vec()),
                    metrics: Some(metrics.to_vec()),
                    ..Attenuation::default()
                },
            )
            .unwrap()
    };
    let load = [mcloud_core::Metric::Load];
    let work = [mcloud_core::Metric::Work];
    let none = Ok(Vec::new());
    assert_eq!(
        houses(narrowed(&[0], &load), by_plug).await,
        Ok(vec![3, 4, 5])
    );
    assert_eq!(houses(narrowed(&[0], &load), by_house).await, none);
    assert_eq!(houses(narrowed(&[1], &load), by_plug).await, none);
    assert_eq!(houses(narrowed(&[0], &work), by_plug).await, none);
    assert_eq!(
        houses(narrowed(&[0], &load), range).await,
        Ok(vec![3, 4, 5])
    );
    assert_eq!(houses(narrowed(&[0], &work), range).await, none);
    cluster.shutdown().await;
}

/// A revoked sensor's sessions are refused at every cloud and catalog node, it opens no new
/// one, and other sensors go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_sensor_is_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_parties(dir.path(), 60).await;
    let scope = SensorScope {
        sensor: 9,
        house: Some(3),
        plugs: None,
    };
    let sessions = mcloud_client::SensorSessions::new(
        cluster.sensor_credentials(scope),
        cluster.cloud_endpoints().unwrap(),
    );
    let party0 = sessions.header(0).await.unwrap();
    let flag = postcard::to_stdvec(&mcloud_core::wire::FlagIds {
        ids: vec![mcloud_core::BatchId::of_sensor(9)],
    })
    .unwrap();
    let ask = |url: String| {
        let http = cluster.http();
        let (session, body) = (party0.clone(), flag.clone());
        async move {
            let r = http
                .post(&url)
                .header("authorization", session)
                .body(body)
                .send()
                .await
                .unwrap();
            status_and_code(r).await
        }
    };
    let cloud = format!("{}/v1/watermark", cluster.cloud_urls()[0]);
    let catalog = format!("{}/v1/flags/get", cluster.catalog_url());
    assert_eq!(ask(catalog.clone()).await.0, 200);
    let by_cloud = cluster
        .cloud_catalog_client(0)
        .unwrap()
        .revoke_sensors(vec![9])
        .await
        .unwrap_err();
    assert!(by_cloud.to_string().contains("wrong_role"), "{by_cloud}");
    cluster
        .admin_catalog_client(0)
        .unwrap()
        .revoke_sensors(vec![9])
        .await
        .unwrap();
    let revoked = (401, "sensor_revoked".to_string());
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while ask(cloud.clone()).await != revoked || ask(catalog.clone()).await != revoked {
        assert!(
            std::time::Instant::now() < until,
            "the revocation never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A session that opened is cached, so each attempt starts from fresh sessions.
    let fresh = || {
        mcloud_client::SensorSessions::new(
            cluster.sensor_credentials(SensorScope {
                sensor: 9,
                house: Some(3),
                plugs: None,
            }),
            cluster.cloud_endpoints().unwrap(),
        )
    };
    // Each cloud reads the revocations on its own poll, so every party is waited for.
    for party in 0..3 {
        let refused = loop {
            match fresh().header(party).await {
                Err(e) => break e,
                Ok(_) => {
                    assert!(
                        std::time::Instant::now() < until,
                        "party {party} still opens sessions for the revoked sensor"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert!(refused.to_string().contains("sensor_revoked"), "{refused}");
    }
    // The gateway sensor is not affected, and progress beyond the future horizon is refused
    // by name without moving the watermark.
    let gateway = cluster.uploader(Duration::from_secs(30)).unwrap();
    gateway
        .advance_watermark(1_377_986_400, false)
        .await
        .unwrap();
    let future = gateway
        .advance_watermark(u64::MAX / 2, false)
        .await
        .unwrap_err();
    assert!(future.to_string().contains("in the future"), "{future}");
    let status: serde_json::Value = cluster
        .http()
        .get(format!("{}/v1/status", cluster.cloud_urls()[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["watermark"], 1_377_986_400u64);
    // Malformed revocation requests are refused by the catalog itself, not only its client.
    let admin = cluster.admin_client(0).unwrap();
    let url = format!("{}/v1/revocations/sensors", cluster.catalog_url());
    for ids in [Vec::new(), (0..300u32).collect::<Vec<_>>()] {
        let r = admin
            .post(&url)
            .body(postcard::to_stdvec(&ids).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(status_and_code(r).await.0, 400, "{} ids", ids.len());
    }
    let r = admin.post(&url).body(vec![0xff; 3]).send().await.unwrap();
    assert_eq!(status_and_code(r).await.0, 400);
    cluster.shutdown().await;
}

/// `mcloud authority revoke-node`: the revoked administrator's certificate no longer proves
/// anything to a node that installed the party's new list, and the other members still do.
#[test]
fn a_revoked_certificate_is_refused_by_nodes_that_installed_the_list() {
    use mcloud::authority::{run, AuthorityArgs, AuthorityCommand};
    use mcloud_core::auth::authority::NodeCredentials;
    let dir = tempfile::tempdir().unwrap();
    let trust = dir.path().join("trust");
    mcloud::authority::write_local(&trust, 3, 3).unwrap();
    run(AuthorityArgs {
        command: AuthorityCommand::RevokeNode {
            dir: trust.join("authority"),
            party: 0,
            cert: trust.join("admin/cert.pem"),
            install_into: vec![trust.join("voter0")],
        },
    })
    .unwrap();
    let admin = NodeCredentials::load(&trust.join("admin")).unwrap();
    let cloud = NodeCredentials::load(&trust.join("cloud0")).unwrap();
    let voter = NodeCredentials::load(&trust.join("voter0")).unwrap();
    let roots = voter.roots().unwrap();
    assert_eq!(
        roots.identify(&admin.identity.chain().unwrap()),
        Err(mcloud_core::auth::peer::PeerError::Revoked)
    );
    assert_eq!(
        roots.identify(&cloud.identity.chain().unwrap()),
        Ok(cloud.who)
    );
    // A node without the list still believes it: the list must be installed everywhere.
    let stale = NodeCredentials::load(&trust.join("voter1"))
        .unwrap()
        .roots()
        .unwrap();
    assert_eq!(
        stale.identify(&admin.identity.chain().unwrap()),
        Ok(admin.who)
    );
}

/// `mcloud authority rotate` then `retire`: while both CAs are trusted, certificates of either
/// count; once the old one is retired, only the new one's do.
#[test]
fn a_rotated_party_ca_is_trusted_until_it_is_retired() {
    use mcloud::authority::{run, AuthorityArgs, AuthorityCommand};
    use mcloud_core::auth::authority::{Authority, NodeCredentials};
    use mcloud_core::auth::peer::PeerError;
    let dir = tempfile::tempdir().unwrap();
    let trust = dir.path().join("trust");
    mcloud::authority::write_local(&trust, 3, 3).unwrap();
    let authority = trust.join("authority");
    let old_admin = NodeCredentials::load(&trust.join("admin")).unwrap();
    run(AuthorityArgs {
        command: AuthorityCommand::Rotate {
            dir: authority.clone(),
            party: 0,
            install_into: vec![trust.join("voter1")],
        },
    })
    .unwrap();
    let new_admin = Authority::load(&authority)
        .unwrap()
        .node(
            PeerIdentity {
                party: 0,
                role: Role::Admin,
                id: 0,
            },
            &[],
        )
        .unwrap();
    let roots = NodeCredentials::load(&trust.join("voter1"))
        .unwrap()
        .roots()
        .unwrap();
    assert_eq!(
        roots.identify(&new_admin.identity.chain().unwrap()),
        Ok(new_admin.who)
    );
    assert_eq!(
        roots.identify(&old_admin.identity.chain().unwrap()),
        Ok(old_admin.who)
    );
    // A node that did not install the party's new CAs does not know the new one yet.
    let stale = NodeCredentials::load(&trust.join("voter2"))
        .unwrap()
        .roots()
        .unwrap();
    assert_eq!(
        stale.identify(&new_admin.identity.chain().unwrap()),
        Err(PeerError::UnknownIssuer)
    );
    run(AuthorityArgs {
        command: AuthorityCommand::Retire {
            dir: authority,
            party: 0,
            install_into: vec![trust.join("voter1")],
        },
    })
    .unwrap();
    let roots = NodeCredentials::load(&trust.join("voter1"))
        .unwrap()
        .roots()
        .unwrap();
    assert_eq!(
        roots.identify(&new_admin.identity.chain().unwrap()),
        Ok(new_admin.who)
    );
    assert_eq!(
        roots.identify(&old_admin.identity.chain().unwrap()),
        Err(PeerError::UnknownIssuer)
    );
}

/// A node-to-node call that fails says so in its status, not inside a 200; the caller still
/// reads the error from the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_error_never_travels_inside_a_200() {
    use mcloud_catalog::raft::types::WireError;
    use mcloud_catalog::raft::MembershipChange;
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_parties(dir.path(), 60).await;
    let admin = cluster.admin_client(0).unwrap();
    let url = format!("{}/v1/catalog/0/membership", cluster.catalog_url());
    let body = postcard::to_stdvec(&MembershipChange::Remove { id: 99 }).unwrap();
    let answer = admin.post(&url).body(body.clone()).send().await.unwrap();
    let status = answer.status().as_u16();
    assert!((400..600).contains(&status), "{status}");
    let decoded: Result<(), WireError> =
        postcard::from_bytes(&answer.bytes().await.unwrap()).unwrap();
    assert!(decoded.is_err(), "{decoded:?}");
    // The typed client reads the same error.
    let typed: Result<(), WireError> =
        mcloud_core::http::post(&admin, &url, &MembershipChange::Remove { id: 99 })
            .await
            .unwrap();
    assert!(typed.is_err());
    cluster.shutdown().await;
}
