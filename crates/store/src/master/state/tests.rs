use super::*;
use crate::master::ops::{Begin, RefreshBegin};
use rand::SeedableRng;

const MIN: u64 = 60_000;

fn rng() -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(7)
}

fn owner() -> Reader {
    Reader {
        user: "ann".into(),
        app: None,
    }
}

fn as_user(user: &str, app: Option<&str>) -> Reader {
    Reader {
        user: user.into(),
        app: app.map(Into::into),
    }
}

/// What an honest writer records for a plan: each packet on the first `replicas` sources.
fn records_for(
    packets: &[u32],
    cipher_of: impl Fn(u32) -> u8,
    key: u8,
    replicas: u8,
    sources: &[u8],
) -> Vec<PacketRecord> {
    packets
        .iter()
        .flat_map(|&packet| {
            let cipher = cipher_of(packet);
            sources[..usize::from(replicas)]
                .iter()
                .map(move |&source| PacketRecord {
                    packet,
                    sub: 0,
                    source,
                    cipher,
                    key,
                })
        })
        .collect()
}

fn begin(name: &str, len: u64, access: FileAccess) -> Begin {
    Begin::draw(
        ObjectKey::file("ann", name),
        owner(),
        len,
        1024,
        2,
        vec![0, 1, 2],
        3600,
        access,
        &mut rng(),
    )
    .unwrap()
}

fn put(m: &mut Masters, name: &str, len: u64, access: FileAccess, now: u64) -> Begin {
    let b = begin(name, len, access);
    m.apply(&StoreOp::Begin(b.clone()), now).unwrap();
    let all: Vec<u32> = (0..b.ciphers.len() as u32).collect();
    let records = records_for(&all, |p| b.ciphers[p as usize], 0, 2, &b.sources);
    m.apply(
        &StoreOp::Commit(Commit {
            key: b.key.clone(),
            writer: owner(),
            id: b.id,
            records,
        }),
        now + 1,
    )
    .unwrap();
    b
}

#[test]
fn a_plan_is_a_random_order_over_every_packet() {
    let b = begin("f", 20 * 1024 + 1, FileAccess::default());
    assert_eq!(b.order.len(), 21);
    let mut sorted = b.order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..21).collect::<Vec<_>>());
    assert_ne!(b.order, sorted, "the write order is shuffled");
    assert!(b.ciphers.iter().all(|&c| c == 1 || c == 2));
    assert!(b.ciphers.contains(&1) && b.ciphers.contains(&2));
}

#[test]
fn a_committed_file_reads_and_old_versions_are_freed() {
    let mut m = Masters::default();
    let first = put(&mut m, "f", 5000, FileAccess::default(), 0);
    let key = ObjectKey::file("ann", "f");
    let v = m.readable(&key, &owner(), None).unwrap();
    assert_eq!(
        (v.number, v.id, v.len, v.records.len()),
        (0, first.id, 5000, 10)
    );
    assert_eq!(v.expires_ms, 1 + 3600 * 1000);
    assert!(m.garbage(10).is_empty());
    for _ in 0..MAX_VERSIONS {
        put(&mut m, "f", 3000, FileAccess::default(), 10);
    }
    let info = m.list(Kind::File, Some("ann"), &owner());
    assert_eq!(info.len(), 1);
    let numbers: Vec<u32> = info[0].versions.iter().map(|v| v.0).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    // The first version's every copy is garbage, named under its secret.
    let garbage = m.garbage(10);
    assert_eq!(garbage.len(), 1);
    assert_eq!(garbage[0].file, first.id);
    assert_eq!(garbage[0].records.len(), 10);
    assert_eq!(garbage[0].blobs(|_| 1)[0].1.len(), 32);
    m.apply(&StoreOp::Freed(vec![garbage[0].seq]), 20).unwrap();
    assert_eq!(m.garbage_len(), 0);
}

#[test]
fn commits_that_do_not_follow_the_plan_are_refused_and_change_nothing() {
    let mut m = Masters::default();
    let b = begin("f", 4096, FileAccess::default());
    m.apply(&StoreOp::Begin(b.clone()), 0).unwrap();
    let all: Vec<u32> = (0..4).collect();
    let good = records_for(&all, |p| b.ciphers[p as usize], 0, 2, &b.sources);
    let commit = |records: Vec<PacketRecord>| {
        StoreOp::Commit(Commit {
            key: b.key.clone(),
            writer: owner(),
            id: b.id,
            records,
        })
    };
    let before = m.clone();
    let mut cases = vec![good[..7].to_vec()]; // a copy missing
    let mut wrong_key = good.clone();
    wrong_key[0].key = 3;
    cases.push(wrong_key);
    let mut wrong_source = good.clone();
    wrong_source[0].source = 9;
    cases.push(wrong_source);
    let mut wrong_cipher = good.clone();
    wrong_cipher[0].cipher = if good[0].cipher == 1 { 2 } else { 1 };
    cases.push(wrong_cipher);
    let mut twice = good.clone();
    twice.push(good[0]);
    cases.push(twice);
    let mut extra = good.clone();
    extra.push(PacketRecord {
        packet: 4,
        ..good[0]
    });
    cases.push(extra);
    for records in cases {
        let err = m.apply(&commit(records), 5).unwrap_err();
        assert_eq!(err.code(), "bad_records", "{err}");
        assert_eq!(m, before);
    }
    // Someone else's app may not commit it, and a late commit is refused.
    let stranger = StoreOp::Commit(Commit {
        key: b.key.clone(),
        writer: as_user("eve", None),
        id: b.id,
        records: good.clone(),
    });
    assert_eq!(m.apply(&stranger, 5).unwrap_err().code(), "store_forbidden");
    assert_eq!(
        m.apply(&commit(good.clone()), WRITE_DEADLINE_MS)
            .unwrap_err()
            .code(),
        "expired"
    );
    m.apply(&commit(good), 5).unwrap();
}

#[test]
fn a_refresh_rewrites_the_oldest_tenth_under_a_new_key_and_extends_the_date() {
    let mut m = Masters::default();
    let b = put(&mut m, "f", 25 * 1024, FileAccess::default(), 0);
    let key = b.key.clone();
    let mut now = 10 * MIN;
    let mut rewritten = BTreeSet::new();
    for round in 0..10u64 {
        let (id, packets, key_id) = m.refresh_choice(&key, 0).unwrap();
        assert_eq!(id, b.id);
        assert_eq!(packets.len(), 3, "a tenth of 25 packets, rounded up");
        // Oldest keys first: no packet twice until all 25 have been rewritten (after 9 rounds).
        assert!(packets.iter().all(|p| !rewritten.contains(p)) || round >= 8);
        rewritten.extend(packets.iter().copied());
        let r = RefreshBegin::draw(
            key.clone(),
            owner(),
            id,
            packets.clone(),
            key_id,
            &mut rng(),
        );
        m.apply(&StoreOp::RefreshBegin(r.clone()), now).unwrap();
        let cipher_of = |p: u32| r.ciphers[r.packets.iter().position(|&q| q == p).unwrap()];
        let records = records_for(&packets, cipher_of, key_id, 2, &[1, 2, 0]);
        let garbage_before = m.garbage_len();
        m.apply(
            &StoreOp::RefreshCommit(RefreshCommit {
                key: key.clone(),
                writer: owner(),
                id,
                records,
            }),
            now + 1,
        )
        .unwrap();
        let v = m.version(&key, Some(0)).unwrap();
        assert_eq!(v.expires_ms, now + 1 + 3600 * 1000, "the date moves on");
        assert_eq!(v.records.len(), 50);
        assert!(v
            .records
            .iter()
            .filter(|r| packets.contains(&r.packet))
            .all(|r| r.key == key_id));
        assert!(v.keys.len() <= 11, "{} keys live", v.keys.len());
        assert!(m.garbage_len() > garbage_before, "old copies are freed");
        now += 10 * MIN;
    }
    assert_eq!(rewritten.len(), 25, "ten refreshes rewrite every packet");
    // A refresh that rewrites less than a tenth is refused.
    let (id, packets, key_id) = m.refresh_choice(&key, 0).unwrap();
    let short = RefreshBegin::draw(
        key.clone(),
        owner(),
        id,
        packets[..1].to_vec(),
        key_id,
        &mut rng(),
    );
    assert_eq!(
        m.apply(&StoreOp::RefreshBegin(short), now)
            .unwrap_err()
            .code(),
        "bad_plan"
    );
}

#[test]
fn a_missed_refresh_deletes_the_file_and_frees_every_copy() {
    let mut m = Masters::default();
    let b = put(&mut m, "f", 8 * 1024, FileAccess::default(), 0);
    let expires = m.version(&b.key, None).unwrap().expires_ms;
    assert!(!m.due(expires - 1));
    assert!(m.due(expires));
    m.apply(&StoreOp::Expire, expires).unwrap();
    assert_eq!(
        m.readable(&b.key, &owner(), None).unwrap_err().code(),
        "not_found"
    );
    assert!(m.list(Kind::File, None, &owner()).is_empty());
    let freed: usize = m.garbage(10).iter().map(|g| g.records.len()).sum();
    assert_eq!(freed, 16, "8 packets × 2 copies");
    assert_eq!(m.objects_len(), 0);
}

#[test]
fn a_repair_replaces_lost_copies_and_frees_them_and_keeps_keys_and_aeads() {
    let mut m = Masters::default();
    let b = put(&mut m, "f", 4 * 1024, FileAccess::default(), 0);
    let before = m.version(&b.key, None).unwrap().clone();
    // Source 0 is lost: its copies move to source 3 (a source outside the write's list is
    // fine for a repair).
    let repaired: Vec<PacketRecord> = before
        .records
        .iter()
        .map(|r| PacketRecord {
            source: if r.source == 0 { 3 } else { r.source },
            ..*r
        })
        .collect();
    let repair = |records: Vec<PacketRecord>, writer: Reader| {
        StoreOp::Repair(Repair {
            key: b.key.clone(),
            writer,
            id: b.id,
            records,
        })
    };
    // Refused, changing nothing: another user; a copy under another AEAD or key; a packet
    // left with one copy.
    let untouched = m.clone();
    let err = m.apply(&repair(repaired.clone(), as_user("bob", None)), 2);
    assert_eq!(err.unwrap_err().code(), "store_forbidden");
    let mut wrong_cipher = repaired.clone();
    wrong_cipher[0].cipher = if wrong_cipher[0].cipher == 1 { 2 } else { 1 };
    let err = m.apply(&repair(wrong_cipher, owner()), 2);
    assert_eq!(err.unwrap_err().code(), "bad_records");
    let mut wrong_key = repaired.clone();
    wrong_key[0].key = 9;
    let err = m.apply(&repair(wrong_key, owner()), 2);
    assert_eq!(err.unwrap_err().code(), "bad_records");
    let err = m.apply(&repair(repaired[1..].to_vec(), owner()), 2);
    assert_eq!(err.unwrap_err().code(), "bad_records");
    assert_eq!(m, untouched);

    m.apply(&repair(repaired.clone(), owner()), 2).unwrap();
    let after = m.version(&b.key, None).unwrap();
    assert!(after.records.iter().all(|r| r.source != 0));
    assert_eq!(after.records.len(), before.records.len());
    assert_eq!(after.keys, before.keys);
    let lost: Vec<PacketRecord> = m.garbage(10).into_iter().flat_map(|g| g.records).collect();
    assert_eq!(
        lost.len(),
        4,
        "the 4 copies on the lost source go to the garbage"
    );
    assert!(lost.iter().all(|r| r.source == 0));
    assert_eq!(
        m.readable(&b.key, &owner(), None).unwrap().records,
        after.records
    );
}

#[test]
fn an_abandoned_write_is_dropped_and_whatever_it_wrote_is_freed() {
    let mut m = Masters::default();
    let b = begin("f", 2048, FileAccess::default());
    m.apply(&StoreOp::Begin(b.clone()), 0).unwrap();
    // Another app of the owner waits for that write to end.
    let other = Begin {
        writer: as_user("ann", Some("phone")),
        ..begin("f", 10, FileAccess::default())
    };
    assert_eq!(
        m.apply(&StoreOp::Begin(other), 1).unwrap_err().code(),
        "write_in_progress"
    );
    // The writer itself may give up and begin again at once: what the first write may have
    // written is freed, two packets on each of the three sources it might have used.
    m.apply(&StoreOp::Begin(begin("f", 10, FileAccess::default())), 1)
        .unwrap();
    assert_eq!(m.garbage(10).len(), 1);
    assert_eq!(m.garbage(10)[0].records.len(), 6);
    m.apply(&StoreOp::Expire, WRITE_DEADLINE_MS + 1).unwrap();
    assert_eq!(m.objects_len(), 0);
    // The second write's one packet, likewise.
    assert_eq!(m.garbage(10)[1].records.len(), 3);
}

#[test]
fn each_access_modifier_and_the_deny_list_hold_in_reads_lists_and_deletes() {
    let mut m = Masters::default();
    put(&mut m, "private", 10, FileAccess::default(), 0);
    let friends = FileAccess {
        friends: vec!["bob".into()],
        ..FileAccess::default()
    };
    put(&mut m, "friends", 10, friends, 0);
    let open = FileAccess {
        others: true,
        denied_apps: vec!["tracker".into()],
        ..FileAccess::default()
    };
    put(&mut m, "open", 10, open, 0);
    let names = |m: &Masters, r: &Reader| -> Vec<String> {
        m.list(Kind::File, None, r)
            .into_iter()
            .map(|i| i.key.name)
            .collect()
    };
    assert_eq!(names(&m, &owner()), vec!["friends", "open", "private"]);
    assert_eq!(
        names(&m, &as_user("bob", Some("tablet"))),
        vec!["friends", "open"]
    );
    assert_eq!(names(&m, &as_user("eve", None)), vec!["open"]);
    assert_eq!(
        names(&m, &as_user("eve", Some("tracker"))),
        Vec::<String>::new()
    );
    assert_eq!(
        names(&m, &as_user("ann", Some("tracker"))),
        vec!["friends", "private"]
    );
    let private = ObjectKey::file("ann", "private");
    assert_eq!(
        m.readable(&private, &as_user("bob", None), None)
            .unwrap_err()
            .code(),
        "store_forbidden"
    );
    let open_key = ObjectKey::file("ann", "open");
    assert!(m.readable(&open_key, &as_user("eve", None), None).is_ok());
    assert_eq!(
        m.apply(
            &StoreOp::Delete {
                key: open_key.clone(),
                by: as_user("eve", None)
            },
            1
        )
        .unwrap_err()
        .code(),
        "store_forbidden"
    );
    m.apply(
        &StoreOp::Delete {
            key: open_key,
            by: owner(),
        },
        1,
    )
    .unwrap();
    assert_eq!(names(&m, &as_user("eve", None)), Vec::<String>::new());
}

#[test]
fn a_message_reads_only_for_its_recipient_and_is_gone_once_read() {
    let mut m = Masters::default();
    let key = ObjectKey::message("bob", 42);
    let sender = as_user("collector", None);
    let b = Begin::draw(
        key.clone(),
        sender.clone(),
        100,
        1024,
        2,
        vec![0, 1],
        86_400,
        FileAccess::default(),
        &mut rng(),
    )
    .unwrap();
    m.apply(&StoreOp::Begin(b.clone()), 0).unwrap();
    let records = records_for(&[0], |p| b.ciphers[p as usize], 0, 2, &b.sources);
    // The recipient (or anyone else) cannot finish the sender's write.
    let hijack = StoreOp::Commit(Commit {
        key: key.clone(),
        writer: as_user("bob", None),
        id: b.id,
        records: records.clone(),
    });
    let before = m.clone();
    assert_eq!(m.apply(&hijack, 1).unwrap_err().code(), "store_forbidden");
    assert_eq!(m, before);
    m.apply(
        &StoreOp::Commit(Commit {
            key: key.clone(),
            writer: sender.clone(),
            id: b.id,
            records,
        }),
        1,
    )
    .unwrap();
    let inbox = m.list(Kind::Message, None, &as_user("bob", Some("phone")));
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].from, Some(sender.clone()));
    assert!(m
        .list(Kind::Message, None, &as_user("eve", None))
        .is_empty());
    assert!(
        m.list(Kind::File, None, &as_user("bob", None)).is_empty(),
        "messages are not files"
    );
    assert_eq!(
        m.readable(&key, &as_user("eve", None), None)
            .unwrap_err()
            .code(),
        "store_forbidden"
    );
    assert_eq!(
        m.readable(&key, &sender, None).unwrap_err().code(),
        "store_forbidden"
    );
    assert!(m.readable(&key, &as_user("bob", None), None).is_ok());
    assert_eq!(
        m.apply(
            &StoreOp::Delete {
                key: key.clone(),
                by: sender
            },
            2
        )
        .unwrap_err()
        .code(),
        "store_forbidden"
    );
    m.apply(
        &StoreOp::Delete {
            key: key.clone(),
            by: as_user("bob", None),
        },
        2,
    )
    .unwrap();
    assert_eq!(
        m.readable(&key, &as_user("bob", None), None)
            .unwrap_err()
            .code(),
        "not_found"
    );
    assert_eq!(m.garbage(10)[0].records.len(), 2);
}

#[test]
fn a_mailbox_key_names_the_houses_whose_alerts_it_takes() {
    let mut m = Masters::default();
    let key = |user: &str, houses: &[u32]| StoreOp::SetMailboxKey {
        user: user.into(),
        public_key: [1; 32],
        houses: houses.to_vec(),
    };
    m.apply(&key("alice", &[1, 2, 3]), 0).unwrap();
    m.apply(&key("bob", &[3, 4]), 0).unwrap();
    let owners = |m: &Masters| m.house_owners(&[1, 2, 3, 4, 5]);
    let named = |pairs: &[(u32, &str)]| -> Vec<(u32, String)> {
        pairs.iter().map(|(h, u)| (*h, u.to_string())).collect()
    };
    // The latest key to name a house takes its alerts.
    assert_eq!(
        owners(&m),
        named(&[(1, "alice"), (2, "alice"), (3, "bob"), (4, "bob")])
    );
    // A new key replaces its user's houses.
    m.apply(&key("alice", &[2]), 0).unwrap();
    assert_eq!(owners(&m), named(&[(2, "alice"), (3, "bob"), (4, "bob")]));
    m.check().unwrap();
    let too_many: Vec<u32> = (0..=crate::master::MAX_HOUSES_PER_MAILBOX as u32).collect();
    let before = m.clone();
    let e = m.apply(&key("carol", &too_many), 0).unwrap_err();
    assert_eq!(e.code(), "bad_plan", "{e}");
    assert_eq!(m, before);
}

#[test]
fn out_of_range_requests_are_refused_by_name() {
    let mut m = Masters::default();
    let r = &mut rng();
    let key = ObjectKey::file("ann", "f");
    let draw = |len, packet, replicas, sources: Vec<u8>, r: &mut rand_chacha::ChaCha8Rng| {
        Begin::draw(
            key.clone(),
            owner(),
            len,
            packet,
            replicas,
            sources,
            3600,
            FileAccess::default(),
            r,
        )
    };
    assert_eq!(
        draw(10, 100, 2, vec![0, 1], r).unwrap_err().code(),
        "bad_plan"
    );
    assert_eq!(
        draw(1 << 31, 16384, 2, vec![0, 1], r).unwrap_err().code(),
        "bad_plan"
    );
    assert_eq!(
        draw(10, 16384, 3, vec![0, 1], r).unwrap_err().code(),
        "bad_plan"
    );
    assert_eq!(
        draw(10, 16384, 1, vec![0, 0], r).unwrap_err().code(),
        "bad_plan"
    );
    let mut b = draw(10, 16384, 1, vec![0], r).unwrap();
    b.lifetime_secs = 1;
    assert_eq!(
        m.apply(&StoreOp::Begin(b.clone()), 0).unwrap_err().code(),
        "bad_plan"
    );
    b.lifetime_secs = 3600;
    b.key.name = "../x\n".into();
    assert_eq!(
        m.apply(&StoreOp::Begin(b.clone()), 0).unwrap_err().code(),
        "bad_name"
    );
    b.key.name = "f".into();
    b.order = vec![1];
    assert_eq!(
        m.apply(&StoreOp::Begin(b), 0).unwrap_err().code(),
        "bad_plan"
    );
    assert_eq!(m, Masters::default());
}
