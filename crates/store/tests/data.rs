//! The data plane on local-directory sources: what a source sees, losing and mending
//! copies, refusing changed blobs, refreshing under new keys.

mod common;

use common::{blobs_in, copies, grant, plan, readings};
use mcloud_store::data::{free, read_file, repair, rewrite_packets, write_file, ReadGrant};
use mcloud_store::packet::{KeySecret, PacketRecord};
use mcloud_store::source::{SourceConfig, Sources};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

fn local(dir: &Path, ids: &[u8]) -> (Vec<SourceConfig>, Vec<PathBuf>) {
    let configs: Vec<SourceConfig> = ids
        .iter()
        .map(|&id| SourceConfig::local(id, dir.join(format!("s{id}"))))
        .collect();
    let paths = ids.iter().map(|id| dir.join(format!("s{id}"))).collect();
    (configs, paths)
}

fn name_of(grant: &ReadGrant, r: &PacketRecord) -> String {
    let key = grant
        .keys
        .iter()
        .find(|k| k.id == r.key)
        .expect("key granted");
    r.place(grant.file).blob_name(key, r.source)
}

#[tokio::test]
async fn a_source_sees_nothing_but_random_names_and_noise() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, paths) = local(dir.path(), &[1, 2, 3]);
    let sources = Sources::open(&configs).unwrap();
    let data = readings(40 * 16 * 1024 + 123);
    let file = 0x00c0_ffee_0000_0042;
    let plan = plan(file, data.len(), 16 * 1024, 2);
    let records = write_file(&sources, &plan, &data).await.unwrap();
    assert_eq!(records.len(), 41 * 2);
    assert_eq!(
        read_file(&sources, &grant(&plan, records.clone()))
            .await
            .unwrap(),
        data
    );

    let windows: HashSet<&[u8]> = data.windows(8).collect();
    let mut names = HashSet::new();
    let mut counts = [0u64; 256];
    let mut total = 0u64;
    for path in &paths {
        for (name, bytes) in blobs_in(path) {
            assert_eq!(name.len(), 32, "{name}");
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(
                !name.contains(&format!("{file:x}")),
                "{name} shows the file id"
            );
            assert!(names.insert(name.clone()), "{name} twice");
            if let Some(w) = bytes.windows(8).find(|w| windows.contains(w)) {
                panic!(
                    "blob {name} holds plaintext {:?}",
                    String::from_utf8_lossy(w)
                );
            }
            for b in &bytes {
                counts[usize::from(*b)] += 1;
            }
            total += bytes.len() as u64;
        }
    }
    assert_eq!(names.len(), records.len());
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.log2()
        })
        .sum();
    assert!(entropy >= 7.9, "{entropy} bits per byte");

    // The same data as another version: names share nothing with the first.
    let again = common::plan(file ^ 1, data.len(), 16 * 1024, 2);
    let records = write_file(&sources, &again, &data).await.unwrap();
    let grant = grant(&again, records);
    for r in &grant.records {
        assert!(!names.contains(&name_of(&grant, r)));
    }
    // Names do not follow a packet's place either: neighbours share no prefix pattern.
    let first: BTreeSet<String> = grant
        .records
        .iter()
        .map(|r| name_of(&grant, r)[..4].to_string())
        .collect();
    assert!(first.len() > grant.records.len() / 2);
}

#[tokio::test]
async fn losing_a_source_falls_back_and_repair_restores_the_copies() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, paths) = local(dir.path(), &[1, 2, 3, 4]);
    let sources = Sources::open(&configs).unwrap();
    let data = readings(30 * 4096 + 7);
    let plan = plan(77, data.len(), 4096, 2);
    let records = write_file(&sources, &plan, &data).await.unwrap();
    let g = grant(&plan, records.clone());
    assert!(copies(&records).values().all(|s| s.len() == 2));
    // Every source got some packets.
    for id in 1..=4u8 {
        assert!(records.iter().any(|r| r.source == id), "source {id} unused");
    }

    // One blob gone, then a whole source: every packet still reads.
    // (A packet with no copy on source 2, which goes next.)
    let on = copies(&records);
    let r0 = *records
        .iter()
        .find(|r| r.source != 2 && !on[&r.packet].contains(&2))
        .expect("a packet off source 2");
    std::fs::remove_file(paths[usize::from(r0.source) - 1].join(name_of(&g, &r0))).unwrap();
    assert_eq!(read_file(&sources, &g).await.unwrap(), data);
    std::fs::remove_dir_all(&paths[1]).unwrap();
    assert_eq!(read_file(&sources, &g).await.unwrap(), data);

    // Source 2 is gone for good: the process no longer knows it.
    let (rest, _) = local(dir.path(), &[1, 3, 4]);
    let sources = Sources::open(&rest).unwrap();
    assert_eq!(read_file(&sources, &g).await.unwrap(), data);
    let repaired = repair(&sources, &g, 2).await.unwrap();
    let on = copies(&repaired);
    assert_eq!(on.len(), 31);
    for (p, s) in &on {
        assert_eq!(s.len(), 2, "packet {p}: {s:?}");
        assert!(!s.contains(&2));
    }
    // The copies that were fine stayed where they were.
    let kept: Vec<&PacketRecord> = records
        .iter()
        .filter(|r| r.source != 2 && **r != r0)
        .collect();
    assert!(kept.iter().all(|r| repaired.contains(r)));
    let g = grant(&plan, repaired);
    // Every recorded blob is there, and a second repair finds nothing to do.
    for r in &g.records {
        assert!(paths[usize::from(r.source) - 1]
            .join(name_of(&g, r))
            .is_file());
    }
    assert_eq!(repair(&sources, &g, 2).await.unwrap(), g.records);

    // Another source lost: still readable.
    std::fs::remove_dir_all(&paths[2]).unwrap();
    assert_eq!(read_file(&sources, &g).await.unwrap(), data);
}

#[tokio::test]
async fn an_unreachable_source_is_written_around_and_read_around() {
    let dir = tempfile::tempdir().unwrap();
    let (mut configs, _) = local(dir.path(), &[1, 2]);
    // Nothing listens on port 1.
    configs.push(SourceConfig::s3(9, "http://127.0.0.1:1", "gone", "a", "b"));
    let sources = Sources::open(&configs).unwrap();
    let data = readings(20 * 1024);
    let plan = plan(5, data.len(), 1024, 2);
    let records = write_file(&sources, &plan, &data).await.unwrap();
    assert!(
        records.iter().all(|r| r.source != 9),
        "a copy on the dead source"
    );
    assert!(copies(&records).values().all(|s| s.len() == 2));
    assert!(sources.placement().feedback(9) < 1e-3);

    // With only one other source, three copies cannot be had.
    let err = write_file(&sources, &common::plan(6, data.len(), 1024, 3), &data)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_enough_sources");

    // A grant that (wrongly) puts a copy there as well reads from the others.
    let mut g = grant(&plan, records);
    let extra: Vec<PacketRecord> = g
        .records
        .iter()
        .map(|r| PacketRecord { source: 9, ..*r })
        .collect();
    g.records.extend(extra);
    g.records.sort_unstable();
    g.records.dedup();
    assert_eq!(read_file(&sources, &g).await.unwrap(), data);
}

#[tokio::test]
async fn a_changed_or_swapped_blob_is_refused_unless_a_good_copy_exists() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, paths) = local(dir.path(), &[1, 2]);
    let sources = Sources::open(&configs).unwrap();
    let data = readings(8 * 2048);
    let path =
        |g: &ReadGrant, r: &PacketRecord| paths[usize::from(r.source) - 1].join(name_of(g, r));

    // One copy each: a flipped bit is refused.
    let single = plan(11, data.len(), 2048, 1);
    let g = grant(&single, write_file(&sources, &single, &data).await.unwrap());
    let victim = path(&g, &g.records[3]);
    let original = std::fs::read(&victim).unwrap();
    let mut changed = original.clone();
    changed[100] ^= 0x20;
    std::fs::write(&victim, &changed).unwrap();
    assert_eq!(
        read_file(&sources, &g).await.unwrap_err().code(),
        "packet_corrupt"
    );
    std::fs::write(&victim, &original).unwrap();
    assert_eq!(read_file(&sources, &g).await.unwrap(), data);
    // Two blobs swapped (each a perfectly good blob, at the wrong place): refused.
    let (a, b) = (path(&g, &g.records[1]), path(&g, &g.records[2]));
    let (ba, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::write(&a, &bb).unwrap();
    std::fs::write(&b, &ba).unwrap();
    assert_eq!(
        read_file(&sources, &g).await.unwrap_err().code(),
        "packet_corrupt"
    );
    // A truncated blob too.
    std::fs::write(&a, &ba[..ba.len() - 1]).unwrap();
    std::fs::write(&b, &bb).unwrap();
    assert_eq!(
        read_file(&sources, &g).await.unwrap_err().code(),
        "packet_corrupt"
    );

    // Two copies: one bad copy is read around, both bad are refused.
    let double = plan(12, data.len(), 2048, 2);
    let g = grant(&double, write_file(&sources, &double, &data).await.unwrap());
    let of_packet: Vec<PacketRecord> = g
        .records
        .iter()
        .filter(|r| r.packet == 5)
        .copied()
        .collect();
    assert_eq!(of_packet.len(), 2);
    let first = path(&g, &of_packet[0]);
    let good = std::fs::read(&first).unwrap();
    std::fs::write(&first, vec![7u8; good.len()]).unwrap();
    assert_eq!(read_file(&sources, &g).await.unwrap(), data);
    // Repair mends the bad copy in place (no other source is left) from the good one.
    let repaired = repair(&sources, &g, 2).await.unwrap();
    assert_eq!(repaired, g.records);
    assert_eq!(std::fs::read(&first).unwrap(), good);
    let second = path(&g, &of_packet[1]);
    std::fs::write(&first, b"junk").unwrap();
    std::fs::write(&second, b"junk").unwrap();
    assert_eq!(
        read_file(&sources, &g).await.unwrap_err().code(),
        "packet_corrupt"
    );
    assert_eq!(
        repair(&sources, &g, 2).await.unwrap_err().code(),
        "packet_corrupt"
    );
    // A missing blob with no other copy says so.
    std::fs::remove_file(&first).unwrap();
    std::fs::remove_file(&second).unwrap();
    assert_eq!(
        read_file(&sources, &g).await.unwrap_err().code(),
        "blob_missing"
    );
}

#[tokio::test]
async fn a_refresh_puts_packets_under_new_names_and_the_old_can_be_freed() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, _) = local(dir.path(), &[1, 2, 3]);
    let sources = Sources::open(&configs).unwrap();
    let data = readings(20 * 1024 + 5);
    let plan = plan(21, data.len(), 1024, 2);
    let old = grant(&plan, write_file(&sources, &plan, &data).await.unwrap());
    let before: usize = blob_count(&sources).await;
    assert_eq!(before, old.records.len());

    let packets = [0u32, 7, 20];
    let key = KeySecret::random(2);
    let ciphers = [2u8, 1, 2];
    let fresh = rewrite_packets(&sources, &old, &packets, &key, &ciphers, 2)
        .await
        .unwrap();
    assert_eq!(fresh.len(), 6);
    assert!(fresh
        .iter()
        .all(|r| r.key == 2 && packets.contains(&r.packet)));
    assert!(fresh
        .iter()
        .all(|r| r.cipher == ciphers[packets.iter().position(|p| *p == r.packet).unwrap()]));
    // The key id in use already is refused: it would seal a place twice.
    let err = rewrite_packets(&sources, &old, &packets, &KeySecret::random(1), &ciphers, 2).await;
    assert_eq!(err.unwrap_err().code(), "bad_grant");

    let (gone, mut kept): (Vec<PacketRecord>, Vec<PacketRecord>) = old
        .records
        .iter()
        .partition(|r| packets.contains(&r.packet));
    kept.extend(&fresh);
    kept.sort_unstable();
    let new = ReadGrant {
        records: kept,
        keys: vec![plan.key.clone(), key.clone()],
        ..old.clone()
    };
    let old_names: HashSet<String> = gone.iter().map(|r| name_of(&old, r)).collect();
    for r in &fresh {
        assert!(!old_names.contains(&name_of(&new, r)));
    }
    assert_eq!(read_file(&sources, &new).await.unwrap(), data);

    let blobs: Vec<(u8, String)> = gone.iter().map(|r| (r.source, name_of(&old, r))).collect();
    assert_eq!(free(&sources, &blobs).await.unwrap(), 6);
    // Freeing again is fine: they are gone already.
    assert_eq!(free(&sources, &blobs).await.unwrap(), 6);
    assert_eq!(blob_count(&sources).await, before);
    for (source, name) in &blobs {
        assert!(!sources.list(*source).await.unwrap().contains(name));
    }
    assert_eq!(read_file(&sources, &new).await.unwrap(), data);
    // The old grant has lost those packets.
    assert_eq!(
        read_file(&sources, &old).await.unwrap_err().code(),
        "blob_missing"
    );
}

async fn blob_count(sources: &Sources) -> usize {
    let mut n = 0;
    for id in sources.ids() {
        n += sources.list(id).await.unwrap().len();
    }
    n
}

#[tokio::test]
async fn a_source_that_takes_small_blobs_gets_sub_packets() {
    let dir = tempfile::tempdir().unwrap();
    let (mut configs, paths) = local(dir.path(), &[1, 2]);
    configs[1].max_blob_bytes = Some(4096);
    let sources = Sources::open(&configs).unwrap();
    let data = readings(3 * 16 * 1024 + 100);
    let plan = plan(31, data.len(), 16 * 1024, 2);
    let records = write_file(&sources, &plan, &data).await.unwrap();
    // 16 KiB in pieces of 4096 − 16 bytes: five sub-packets, on both copies alike.
    for p in 0..3 {
        for s in [1, 2] {
            let subs: Vec<u8> = records
                .iter()
                .filter(|r| r.packet == p && r.source == s)
                .map(|r| r.sub)
                .collect();
            assert_eq!(subs, vec![0, 1, 2, 3, 4], "packet {p} on {s}");
        }
    }
    assert!(blobs_in(&paths[1]).iter().all(|(_, b)| b.len() <= 4096));
    let g = grant(&plan, records);
    assert_eq!(read_file(&sources, &g).await.unwrap(), data);
    // A lost sub-packet of one copy: the other copy serves.
    let lost = g
        .records
        .iter()
        .find(|r| r.source == 2 && r.sub == 3)
        .unwrap();
    std::fs::remove_file(paths[1].join(name_of(&g, lost))).unwrap();
    assert_eq!(read_file(&sources, &g).await.unwrap(), data);
    assert_eq!(repair(&sources, &g, 2).await.unwrap(), g.records);
    assert!(paths[1].join(name_of(&g, lost)).is_file());
}

/// A write abandoned before its commit leaves every blob it wrote freed, the sub-packets a
/// small-blob source got included, though the masters never learned how they were split.
#[tokio::test]
async fn an_abandoned_write_is_freed_whole_on_a_small_blob_source() {
    use mcloud_store::data::WritePlan;
    use mcloud_store::master::{Begin, FileAccess, Masters, ObjectKey, Reader, StoreOp};
    let dir = tempfile::tempdir().unwrap();
    let (mut configs, paths) = local(dir.path(), &[1, 2]);
    configs[1].max_blob_bytes = Some(4096);
    let sources = Sources::open(&configs).unwrap();
    let data = readings(3 * 16 * 1024 + 100);
    let writer = Reader {
        user: "alice".into(),
        app: None,
    };
    let begin = Begin::draw(
        ObjectKey::file("alice", "left"),
        writer,
        data.len() as u64,
        16 * 1024,
        2,
        sources.ids(),
        86_400,
        FileAccess::default(),
        &mut rand::thread_rng(),
    )
    .unwrap();
    let mut masters = Masters::default();
    masters.apply(&StoreOp::Begin(begin.clone()), 0).unwrap();
    write_file(&sources, &WritePlan::of(&begin), &data)
        .await
        .unwrap();
    // Three full packets in five sub-packets each on source 2, and the last (100 bytes) whole.
    assert_eq!(blobs_in(&paths[1]).len(), 16);
    // No commit: past the write's deadline the masters drop it and list its blobs.
    masters.apply(&StoreOp::Expire, u64::MAX / 2).unwrap();
    let garbage = masters.garbage(10);
    assert_eq!(garbage.len(), 1);
    let subs = |bytes| mcloud_store::data::max_subs(&sources, bytes);
    assert_eq!(subs(16 * 1024), 5);
    free(&sources, &garbage[0].blobs(subs)).await.unwrap();
    for path in &paths {
        assert!(blobs_in(path).is_empty(), "{} keeps blobs", path.display());
    }
}

#[tokio::test]
async fn a_packet_too_big_for_a_small_blob_source_goes_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (mut configs, paths) = local(dir.path(), &[1, 2, 3]);
    configs[1].max_blob_bytes = Some(4096);
    configs[2].max_blob_bytes = Some(1024);
    let sources = Sources::open(&configs).unwrap();
    // 512 KiB packets: 129 sub-packets for source 2, over 256 for source 3.
    let data = readings(3 * 512 * 1024);
    let plan = plan(35, data.len(), 512 * 1024, 2);
    let records = write_file(&sources, &plan, &data).await.unwrap();
    assert!(records.iter().all(|r| r.source != 3));
    assert!(copies(&records)
        .values()
        .all(|s| *s == BTreeSet::from([1, 2])));
    assert_eq!(records.iter().filter(|r| r.source == 2).count(), 3 * 129);
    assert!(blobs_in(&paths[2]).is_empty());
    assert_eq!(
        read_file(&sources, &grant(&plan, records)).await.unwrap(),
        data
    );
    // Three copies cannot be had.
    let three = common::plan(36, data.len(), 512 * 1024, 3);
    let err = write_file(&sources, &three, &data).await.unwrap_err();
    assert_eq!(err.code(), "not_enough_sources");
}

#[tokio::test]
async fn plans_and_grants_that_do_not_fit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, _) = local(dir.path(), &[1, 2]);
    let sources = Sources::open(&configs).unwrap();
    let data = readings(5000);
    let good = plan(41, data.len(), 1024, 2);
    let code = |p: &mcloud_store::data::WritePlan, d: &[u8]| {
        let sources = &sources;
        let p = p.clone();
        let d = d.to_vec();
        async move { write_file(sources, &p, &d).await.unwrap_err().code() }
    };
    assert_eq!(code(&good, &data[1..]).await, "bad_plan");
    let mut p = good.clone();
    p.order[0] = p.order[1];
    assert_eq!(code(&p, &data).await, "bad_plan");
    let mut p = good.clone();
    p.order.pop();
    assert_eq!(code(&p, &data).await, "bad_plan");
    let mut p = good.clone();
    p.ciphers[2] = 9;
    assert_eq!(code(&p, &data).await, "unknown_cipher");
    for r in [0, 3] {
        let p = mcloud_store::data::WritePlan {
            replicas: r,
            ..good.clone()
        };
        assert_eq!(code(&p, &data).await, "bad_plan");
    }
    let p = mcloud_store::data::WritePlan {
        packet_bytes: 10,
        ..good.clone()
    };
    assert_eq!(code(&p, &data).await, "bad_plan");

    let g = grant(&good, write_file(&sources, &good, &data).await.unwrap());
    let refused = |g: ReadGrant| {
        let sources = &sources;
        async move { read_file(sources, &g).await.unwrap_err().code() }
    };
    let mut missing = g.clone();
    missing.records.retain(|r| r.packet != 2);
    assert_eq!(refused(missing).await, "bad_grant");
    assert_eq!(
        refused(ReadGrant {
            keys: vec![],
            ..g.clone()
        })
        .await,
        "bad_grant"
    );
    assert_eq!(
        refused(ReadGrant {
            len: 99_999,
            ..g.clone()
        })
        .await,
        "bad_grant"
    );
    // A grant one byte short: the last packet does not open to that length.
    let short = ReadGrant {
        len: g.len - 1,
        ..g.clone()
    };
    assert_eq!(refused(short).await, "packet_corrupt");

    // An empty file is one empty packet.
    let empty = plan(42, 0, 1024, 2);
    let records = write_file(&sources, &empty, &[]).await.unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(
        read_file(&sources, &grant(&empty, records)).await.unwrap(),
        b""
    );
}

#[tokio::test]
async fn the_aead_figures_come_from_real_sealing() {
    let (seal, open) = mcloud_store::data::aead_throughput(1 << 20).await;
    assert!(seal > 1.0 && open > 1.0, "{seal} {open}");
}
