//! Encrypted storage end to end: three catalog voters as masters (real Raft, real TLS) and
//! local-directory sources, used through the same client `mcloud store` and `mcloud mailbox`
//! use. Each test holds one of the storage's guarantees.

mod common;

use mcloud::cluster::{ClusterOptions, ClusterSpec, LocalCluster, OWNER};
use mcloud_core::http::{post, CallError, Endpoint};
use mcloud_store::client::{ClientError, StoreClient};
use mcloud_store::mailbox::MailboxKeys;
use mcloud_store::master::{FileAccess, ObjectKey};
use mcloud_store::source::SourceConfig;
use mcloud_store::wire::{BeginRequest, StoreRequest, StoreResponse, Target, STORE_PATH};
use rand::RngCore;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SOURCES: u8 = 3;

fn source_dir(dir: &Path, id: u8) -> PathBuf {
    dir.join(format!("source{id}"))
}

/// Three voters, no clouds' data needed, three local sources under `dir`.
async fn cluster(dir: &Path) -> LocalCluster {
    let storage = (0..SOURCES)
        .map(|id| SourceConfig::local(id, source_dir(dir, id)))
        .collect();
    LocalCluster::start_with(
        ClusterSpec {
            parties: 3,
            window_secs: 60,
            grace_secs: 60,
            dir: dir.to_path_buf(),
        },
        ClusterOptions {
            storage,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn owner(cluster: &LocalCluster) -> StoreClient {
    cluster
        .store_client(&cluster.owner_token(0..4).unwrap())
        .unwrap()
}

fn user(cluster: &LocalCluster, name: &str, app: Option<&str>) -> StoreClient {
    cluster
        .store_client(&cluster.user_token(name, app).unwrap())
        .unwrap()
}

/// `len` random bytes with `marker` written at a few places, so a plaintext search has
/// something to find.
fn data(len: usize, marker: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut bytes);
    for at in [0, len / 3, len - marker.len()] {
        bytes[at..at + marker.len()].copy_from_slice(marker);
    }
    bytes
}

/// Every file under each source's directory.
fn blobs(dir: &Path) -> Vec<PathBuf> {
    fn walk(path: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for id in 0..SOURCES {
        walk(&source_dir(dir, id), &mut out);
    }
    out
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
    match result {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_survive_a_lost_master_minority_and_lost_sources_and_sources_see_only_noise() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path()).await;
    let store = owner(&cluster);
    let marker = b"meter 4711 of house 3 at Hauptstrasse 12";
    let first = data(300_000, marker);
    let second = data(50_000, marker);
    let small = marker.to_vec();
    store
        .put("history/2026", &first, FileAccess::default())
        .await
        .unwrap();
    store
        .put("history/2026", &second, FileAccess::default())
        .await
        .unwrap();
    store
        .put("note", &small, FileAccess::default())
        .await
        .unwrap();

    assert_eq!(store.get("", "history/2026", None).await.unwrap(), second);
    assert_eq!(
        store.get(OWNER, "history/2026", Some(0)).await.unwrap(),
        first
    );
    assert_eq!(store.get("", "note", None).await.unwrap(), small);
    let listed = store.list(None).await.unwrap();
    let names: Vec<_> = listed.iter().map(|i| i.key.name.as_str()).collect();
    assert_eq!(names, ["history/2026", "note"]);
    assert_eq!(listed[0].versions.len(), 2);

    // What the sources hold: random names, no trace of the plaintext, bytes near 8 bits of
    // entropy each.
    let stored = blobs(dir.path());
    assert!(!stored.is_empty());
    let mut counts = [0u64; 256];
    let mut total = 0u64;
    for path in &stored {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            mcloud_store::source::is_blob_name(&name),
            "blob name {name} is not a random-looking name"
        );
        let bytes = std::fs::read(path).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "plaintext found in {}",
            path.display()
        );
        for b in &bytes {
            counts[*b as usize] += 1;
        }
        total += bytes.len() as u64;
    }
    let entropy: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / total as f64;
            -p * p.log2()
        })
        .sum();
    assert!(
        entropy > 7.99,
        "stored bytes have {entropy:.4} bits per byte"
    );

    // A minority of masters lost: reads and writes go on.
    cluster.stop_catalog(2).await;
    cluster
        .wait_for_catalog_leaders(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(store.get("", "history/2026", None).await.unwrap(), second);
    store
        .put(
            "after",
            b"written with two of three masters",
            FileAccess::default(),
        )
        .await
        .unwrap();

    // The versions with a copy on source 0 (placement is random): a repair after that
    // source is lost moves exactly theirs.
    let mut on_lost = std::collections::BTreeMap::new();
    for (name, versions) in [("history/2026", 2), ("note", 1), ("after", 1)] {
        let mut hit = Vec::new();
        for number in 0..versions {
            let v = store.describe("", name, Some(number)).await.unwrap();
            if v.records.iter().any(|r| r.source == 0) {
                hit.push(number);
            }
        }
        on_lost.insert(name, hit);
    }
    assert!(
        !on_lost["history/2026"].is_empty(),
        "no packet of either version had a copy on source 0"
    );

    // And a whole source lost on top: every file still reads from the other copies.
    std::fs::remove_dir_all(source_dir(dir.path(), 0)).unwrap();
    assert_eq!(store.get("", "history/2026", None).await.unwrap(), second);
    assert_eq!(store.get("", "history/2026", Some(0)).await.unwrap(), first);
    assert_eq!(store.get("", "note", None).await.unwrap(), small);
    assert_eq!(
        store.get("", "after", None).await.unwrap(),
        b"written with two of three masters"
    );

    // A repair moves the lost copies to the sources left and the masters record them: then
    // a second source can go too and every file still reads, from the last one.
    for name in ["history/2026", "note", "after"] {
        let repaired = store.repair(name).await.unwrap();
        let mut numbers: Vec<_> = repaired.iter().map(|(number, _, _)| *number).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, on_lost[name], "{name}: {repaired:?}");
        for (number, added, dropped) in repaired {
            assert_eq!(added, dropped, "{name} v{number}");
            let v = store.describe("", name, Some(number)).await.unwrap();
            assert!(v.records.iter().all(|r| r.source != 0), "{name} v{number}");
        }
        assert!(
            store.repair(name).await.unwrap().is_empty(),
            "nothing left to repair"
        );
    }
    std::fs::remove_dir_all(source_dir(dir.path(), 1)).unwrap();
    assert_eq!(store.get("", "history/2026", None).await.unwrap(), second);
    assert_eq!(store.get("", "history/2026", Some(0)).await.unwrap(), first);
    assert_eq!(store.get("", "note", None).await.unwrap(), small);

    // The voter comes back and catches up; deleting frees every packet at the sources.
    cluster.restart_catalog(2).await.unwrap();
    for name in ["history/2026", "note", "after"] {
        store.delete(name).await.unwrap();
        assert_eq!(code(store.get("", name, None).await), "not_found");
    }
    let root = dir.path().to_path_buf();
    common::wait_for(30, "every deleted packet freed", async || {
        (blobs(&root).is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_access_modifier_and_the_deny_list_hold() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let ann = owner(&cluster);
    let ann_on_snoop = user(&cluster, OWNER, Some("snoop"));
    let bob = user(&cluster, "bob", None);
    let bob_on_tablet = user(&cluster, "bob", Some("tablet"));
    let carol = user(&cluster, "carol", None);
    let carol_on_snoop = user(&cluster, "carol", Some("snoop"));

    ann.put("private", b"own apps only", FileAccess::default())
        .await
        .unwrap();
    let friends = FileAccess {
        friends: vec!["bob".into()],
        ..Default::default()
    };
    ann.put("friends", b"ann and bob", friends).await.unwrap();
    let public = FileAccess {
        others: true,
        denied_apps: vec!["snoop".into()],
        ..Default::default()
    };
    ann.put("public", b"anyone but snoop", public)
        .await
        .unwrap();

    // Own apps.
    assert_eq!(
        ann.get("", "private", None).await.unwrap(),
        b"own apps only"
    );
    assert_eq!(
        ann_on_snoop.get(OWNER, "private", None).await.unwrap(),
        b"own apps only"
    );
    // Friends' apps, and no one else's.
    assert_eq!(
        bob.get(OWNER, "friends", None).await.unwrap(),
        b"ann and bob"
    );
    assert_eq!(
        bob_on_tablet.get(OWNER, "friends", None).await.unwrap(),
        b"ann and bob"
    );
    assert_eq!(
        code(carol.get(OWNER, "friends", None).await),
        "store_forbidden"
    );
    assert_eq!(
        code(bob.get(OWNER, "private", None).await),
        "store_forbidden"
    );
    // Other users' apps, except a denied app, whoever's it is (the owner's own too).
    assert_eq!(
        carol.get(OWNER, "public", None).await.unwrap(),
        b"anyone but snoop"
    );
    assert_eq!(
        code(carol_on_snoop.get(OWNER, "public", None).await),
        "store_forbidden"
    );
    assert_eq!(
        code(ann_on_snoop.get(OWNER, "public", None).await),
        "store_forbidden"
    );
    // A refusal gives no keys: describing is refused the same way.
    assert_eq!(
        code(carol.describe(OWNER, "private", None).await),
        "store_forbidden"
    );
    // Listing shows only what the caller may read.
    let seen = |infos: Vec<mcloud_store::master::ObjectInfo>| {
        infos.into_iter().map(|i| i.key.name).collect::<Vec<_>>()
    };
    assert_eq!(seen(carol.list(Some(OWNER)).await.unwrap()), ["public"]);
    assert_eq!(
        seen(bob.list(Some(OWNER)).await.unwrap()),
        ["friends", "public"]
    );
    // Only the owner writes or deletes, and a name is always the caller's own.
    bob.put("public", b"bob's own file", FileAccess::default())
        .await
        .unwrap();
    assert_eq!(
        ann.get("", "public", None).await.unwrap(),
        b"anyone but snoop"
    );
    assert_eq!(code(carol.delete("friends").await), "not_found");
    assert_eq!(code(ann_on_snoop.delete("public").await), "store_forbidden");
    assert_eq!(
        bob.get(OWNER, "friends", None).await.unwrap(),
        b"ann and bob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_keeps_a_file_and_a_missed_one_deletes_it_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let mut store = owner(&cluster);
    store.options.lifetime_secs = mcloud_store::master::MIN_LIFETIME_SECS;
    let kept = data(200 * 16 * 1024, b"kept");
    let dropped = data(40 * 16 * 1024, b"dropped");
    store
        .put("kept", &kept, FileAccess::default())
        .await
        .unwrap();
    store
        .put("dropped", &dropped, FileAccess::default())
        .await
        .unwrap();
    let written = Instant::now();
    let before = store.describe("", "kept", None).await.unwrap();
    assert_eq!(before.records.len(), 200 * 2);
    // Half the lifetime on, `kept` is refreshed (its new date is a lifetime from then).
    tokio::time::sleep(Duration::from_secs(
        mcloud_store::master::MIN_LIFETIME_SECS / 2,
    ))
    .await;

    let refreshed = store.refresh("kept").await.unwrap();
    assert_eq!(refreshed, vec![(0, 20)], "a tenth of 200 packets rewritten");
    let after = store.describe("", "kept", None).await.unwrap();
    assert!(
        after.expires_ms > before.expires_ms,
        "the refresh extended the date"
    );
    let new_key = after.keys.last().unwrap().id;
    assert!(
        before.keys.iter().all(|k| k.id != new_key),
        "the key is new"
    );
    let mut rewritten: Vec<u32> = after
        .records
        .iter()
        .filter(|r| r.key == new_key)
        .map(|r| r.packet)
        .collect();
    rewritten.dedup();
    assert_eq!(rewritten.len(), 20);
    assert_eq!(store.get("", "kept", None).await.unwrap(), kept);

    // `dropped` is never refreshed: after its date it is gone from the masters and from
    // every source; `kept`, refreshed since, still reads and only its packets remain.
    let root = dir.path().to_path_buf();
    let wait = Duration::from_secs(mcloud_store::master::MIN_LIFETIME_SECS + 20);
    let mut gone = false;
    while !gone {
        assert!(
            written.elapsed() < wait,
            "the unrefreshed file expired in time"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        gone = matches!(
            store.get("", "dropped", None).await.map_err(|e| e.code()),
            Err(c) if c == "not_found"
        );
    }
    assert_eq!(store.get("", "kept", None).await.unwrap(), kept);
    common::wait_for(
        30,
        "the expired file's and the replaced packets' blobs freed",
        async || (blobs(&root).len() == after.records.len()).then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mailbox_messages_reach_only_their_recipient_and_go_once_read() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let ann = owner(&cluster);
    let bob = user(&cluster, "bob", None);
    let carol = user(&cluster, "carol", None);

    assert_eq!(code(ann.send("bob", b"too early").await), "bad_mailbox_key");
    let bob_keys = MailboxKeys::generate();
    bob.set_mailbox_key(&bob_keys).await.unwrap();
    let carol_keys = MailboxKeys::generate();
    carol.set_mailbox_key(&carol_keys).await.unwrap();

    let id = ann
        .send("bob", b"house 3: plug 7 is an outlier")
        .await
        .unwrap();
    assert!(carol.messages().await.unwrap().is_empty());
    let listed = bob.messages().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key.name, id);
    assert_eq!(listed[0].from.as_ref().unwrap().user, OWNER);
    // Another user cannot open it: the id names a message of the caller's own mailbox.
    assert_eq!(code(carol.message(&id, &carol_keys).await), "not_found");
    assert_eq!(code(carol.read_message(&id).await), "not_found");
    // The wrong key opens nothing either.
    assert_eq!(code(bob.message(&id, &carol_keys).await), "message_corrupt");

    assert_eq!(
        bob.message(&id, &bob_keys).await.unwrap(),
        b"house 3: plug 7 is an outlier"
    );
    bob.read_message(&id).await.unwrap();
    assert!(bob.messages().await.unwrap().is_empty());
    assert_eq!(code(bob.message(&id, &bob_keys).await), "not_found");
    let root = dir.path().to_path_buf();
    common::wait_for(30, "a read message's packets freed", async || {
        (blobs(&root).is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_storage_requests_are_refused_with_codes_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let token = cluster.owner_token(0..4).unwrap();
    let node = Endpoint::new(cluster.catalog_url(), cluster.app_client(&token).unwrap());
    let url = format!("{}{STORE_PATH}", node.url);
    let begin = |name: &str, len: u64, packet_bytes: u32, replicas: u8, lifetime_secs: u64| {
        StoreRequest::Begin(BeginRequest {
            target: Target::File { name: name.into() },
            len,
            packet_bytes,
            replicas,
            sources: vec![0, 1, 2],
            lifetime_secs,
            access: FileAccess::default(),
        })
    };
    let refused = |r: Result<StoreResponse, CallError>| match r {
        Err(CallError::Rejected { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let cases = [
        (begin("../etc/passwd", 10, 16384, 2, 3600), 400, "bad_name"),
        (begin(&"x".repeat(300), 10, 16384, 2, 3600), 400, "bad_name"),
        (begin("big", 1 << 41, 16384, 2, 3600), 400, "bad_plan"),
        (begin("tiny", 10, 10, 2, 3600), 400, "bad_plan"),
        (begin("none", 10, 16384, 0, 3600), 400, "bad_plan"),
        (begin("many", 10, 16384, 9, 3600), 400, "bad_plan"),
        (begin("short", 10, 16384, 2, 5), 400, "bad_plan"),
        (begin("forever", 10, 16384, 2, u64::MAX), 400, "bad_plan"),
    ];
    for (request, status, want) in cases {
        let got = refused(post::<_, StoreResponse>(&node.http, &url, &request).await);
        assert_eq!(got, (status, want.to_string()), "{request:?}");
    }
    // A commit for a write that was never begun, or with records that do not fit its plan.
    let commit = StoreRequest::Commit {
        key: ObjectKey::file(OWNER, "never-begun"),
        id: 7,
        records: vec![],
    };
    let (_, code) = refused(post::<_, StoreResponse>(&node.http, &url, &commit).await);
    assert_eq!(code, "not_found");
    let StoreResponse::Plan(plan) =
        post::<_, StoreResponse>(&node.http, &url, &begin("f", 100, 16384, 2, 3600))
            .await
            .unwrap()
    else {
        panic!("no plan");
    };
    let wrong = StoreRequest::Commit {
        key: plan.key.clone(),
        id: plan.id,
        records: vec![],
    };
    let (status, code) = refused(post::<_, StoreResponse>(&node.http, &url, &wrong).await);
    assert_eq!((status, code.as_str()), (400, "bad_records"));
    // No token, no storage.
    let anonymous = cluster.http();
    let (status, _) = refused(post::<_, StoreResponse>(&anonymous, &url, &commit).await);
    assert_eq!(status, 401);
    // Nothing of it was kept.
    let store = owner(&cluster);
    assert!(store.list(None).await.unwrap().is_empty());
}

/// Runs `mcloud ARGS` in `dir`, returning stdout; panics with stderr on failure.
fn mcloud(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(common::BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mcloud {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_stores_shares_and_mails_through_mcloud_node_processes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        mcloud::processes::ProcessCluster::write(common::process_spec(dir.path())).unwrap();
    for voter in 0..3 {
        cluster
            .start(mcloud::processes::Role::Catalog(voter))
            .unwrap();
    }
    let d = dir.path();
    let store = ["store", "--deployment", "deployment.toml"];
    let as_friend = [
        "store",
        "--deployment",
        "deployment.toml",
        "--token",
        "trust/friend.token",
    ];
    let with = |base: &[&str], more: &[&str]| -> Vec<String> {
        base.iter().chain(more).map(|s| s.to_string()).collect()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mcloud(d, &args)
    };
    let body = data(100_000, b"the owner's notes");
    std::fs::write(d.join("notes.bin"), &body).unwrap();
    // The voters elect their leaders while the first write retries.
    common::wait_for(60, "the masters to take a write", async || {
        let args = with(&store, &["put", "notes", "notes.bin", "--friend", "friend"]);
        let out = std::process::Command::new(common::BIN)
            .current_dir(d)
            .args(&args)
            .output()
            .unwrap();
        out.status.success().then_some(())
    })
    .await;
    let listed = run(with(&store, &["ls"]));
    assert!(
        listed.contains("owner\tnotes\t0\t100000\tin 30.0 d"),
        "{listed}"
    );
    run(with(
        &as_friend,
        &["get", "notes", "--owner", "owner", "--out", "copy.bin"],
    ));
    assert_eq!(std::fs::read(d.join("copy.bin")).unwrap(), body);
    let refreshed = std::process::Command::new(common::BIN)
        .current_dir(d)
        .args(with(&store, &["refresh", "notes"]))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&refreshed.stderr).contains("version 0: 1 packets"),
        "{}",
        String::from_utf8_lossy(&refreshed.stderr)
    );
    let repair = std::process::Command::new(common::BIN)
        .current_dir(d)
        .args(with(&store, &["repair", "notes"]))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&repair.stderr).contains("nothing to repair"),
        "{}",
        String::from_utf8_lossy(&repair.stderr)
    );
    // The friend may read but neither write nor delete the owner's file.
    let refused = std::process::Command::new(common::BIN)
        .current_dir(d)
        .args(with(&as_friend, &["rm", "notes"]))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not_found"));

    let mailbox = ["mailbox", "--deployment", "deployment.toml"];
    let friend_mailbox = [
        "mailbox",
        "--deployment",
        "deployment.toml",
        "--token",
        "trust/friend.token",
    ];
    run(with(
        &friend_mailbox,
        &["keygen", "--key", "friend.mailbox"],
    ));
    let id = run(with(
        &mailbox,
        &["send", "--to", "friend", "--text", "plug 7 is an outlier"],
    ));
    let id = id.trim();
    let listed = run(with(&friend_mailbox, &["list"]));
    assert!(listed.contains(&format!("{id}\towner\t")), "{listed}");
    let text = run(with(
        &friend_mailbox,
        &["read", id, "--key", "friend.mailbox"],
    ));
    assert_eq!(text, "plug 7 is an outlier");
    let listed = run(with(&friend_mailbox, &["list"]));
    assert_eq!(
        listed.lines().count(),
        1,
        "only the header is left: {listed}"
    );

    run(with(&store, &["rm", "notes"]));
    assert!(run(with(&store, &["ls"])).lines().count() == 1);
    // Every packet freed at the sources by the leading voter's upkeep.
    common::wait_for(60, "the sources to be emptied", async || {
        let left = (0..mcloud::processes::STORAGE_SOURCES)
            .map(|id| {
                std::fs::read_dir(d.join(format!("sources/{id}")))
                    .map(|e| e.count())
                    .unwrap_or(0)
            })
            .sum::<usize>();
        (left == 0).then_some(())
    })
    .await;
}

/// The message ids `mcloud mailbox list` printed (its first column, after the header).
fn message_ids(listed: &str) -> Vec<&str> {
    listed
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_analytics_results_are_archived_for_a_friend_and_outliers_alerted() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = common::process_spec(dir.path());
    spec.window_secs = 30;
    let mut cluster = mcloud::processes::ProcessCluster::write(spec).unwrap();
    cluster.start_all().unwrap();
    let d = dir.path();
    let friend = [
        "--deployment",
        "deployment.toml",
        "--token",
        "trust/friend.token",
    ];
    common::wait_for(60, "the friend's mailbox key published", async || {
        std::process::Command::new(common::BIN)
            .current_dir(d)
            .args(["mailbox"])
            .args(friend)
            .args(["keygen", "--key", "friend.mailbox"])
            .output()
            .unwrap()
            .status
            .success()
            .then_some(())
    })
    .await;
    let mut sensor = common::start_sensor(&cluster, &["--histograms", "--wait-secs", "60"]);
    assert!(sensor.0.wait().unwrap().success(), "the sensor failed");

    let revealed = mcloud(
        d,
        &[
            "query",
            "--deployment",
            "deployment.toml",
            "--output",
            "csv",
            "--wait-secs",
            "30",
            "--archive",
            "results/houses",
            "--archive-friend",
            "friend",
        ],
    );
    let archived = mcloud(
        d,
        &[
            &["store"][..],
            &friend,
            &["get", "results/houses", "--owner", "owner"],
        ]
        .concat(),
    );
    assert_eq!(archived, revealed);
    assert!(revealed.lines().count() > 10, "{revealed}");

    let start = mcloud_core::synthetic::SyntheticConfig::default().start_ts;
    let (from, to) = (start.to_string(), (start + 899).to_string());
    let analytics = |more: &[&str]| {
        let args = [
            "analytics",
            "--deployment",
            "deployment.toml",
            "--from",
            &from,
            "--to",
            &to,
        ];
        mcloud(d, &[&args[..], more].concat())
    };
    let tables = analytics(&[
        "--archive",
        "debs",
        "--archive-others",
        "--alert-to",
        "friend",
        "--alert-percent",
        "0",
    ]);
    let get = |name: &str| {
        mcloud(
            d,
            &[&["store"][..], &friend, &["get", name, "--owner", "owner"]].concat(),
        )
    };
    let (q1, q2) = (get("debs/q1.csv"), get("debs/q2.csv"));
    assert!(q1.starts_with(mcloud_analytics::Q1_HEADER), "{q1}");
    assert!(q2.starts_with(mcloud_analytics::Q2_HEADER), "{q2}");
    assert_eq!(
        tables,
        format!("{q1}{q2}"),
        "the archive holds what was printed"
    );

    // At 0 % every house with a Q2 row is an outlier: one alert per house, to the friend.
    let listed = mcloud(d, &[&["mailbox"][..], &friend, &["list"]].concat());
    let ids = message_ids(&listed);
    assert_eq!(ids.len(), 2, "{listed}");
    for id in ids {
        let text = mcloud(
            d,
            &[
                &["mailbox"][..],
                &friend,
                &["read", id, "--key", "friend.mailbox"],
            ]
            .concat(),
        );
        assert!(text.starts_with("mcloud alert: house "), "{text}");
        assert!(text.contains(mcloud_analytics::Q2_HEADER), "{text}");
    }

    // `--alert-owners`: each house's alert goes to the user whose mailbox key names it. None
    // is sent while the houses' owner has published no key; once it has (with its token,
    // which owns every house here), one per house, and no one else gets any.
    let alert_owners = || analytics(&["--alert-owners", "--alert-percent", "0"]);
    let owner = ["--deployment", "deployment.toml"];
    let mailbox = |args: &[&str]| mcloud(d, &[&["mailbox"][..], &owner, args].concat());
    alert_owners();
    mailbox(&["keygen", "--key", "owner.mailbox"]);
    assert_eq!(
        mailbox(&["list"]).lines().count(),
        1,
        "a header, no message"
    );
    alert_owners();
    let listed = mailbox(&["list"]);
    let ids = message_ids(&listed);
    assert_eq!(ids.len(), 2, "{listed}");
    let mut houses = Vec::new();
    for id in ids {
        let text = mailbox(&["read", id, "--key", "owner.mailbox"]);
        assert!(text.starts_with("mcloud alert: house "), "{text}");
        houses.push(text.split_whitespace().nth(3).unwrap().to_string());
    }
    houses.sort();
    houses.dedup();
    assert_eq!(houses.len(), 2, "one alert per house: {houses:?}");
    let listed = mcloud(d, &[&["mailbox"][..], &friend, &["list"]].concat());
    assert_eq!(listed.lines().count(), 1, "{listed}");
}
