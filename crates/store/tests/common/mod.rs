//! What the data-plane tests share: plans, grants and a look at the sources' directories.

#![allow(dead_code)]

use mcloud_store::data::{ReadGrant, WritePlan};
use mcloud_store::packet::{Cipher, KeySecret, PacketRecord};
use rand::seq::SliceRandom;
use std::path::Path;

/// A plan as the master would draw it: random order, random AEAD per packet.
pub fn plan(file: u64, len: usize, packet_bytes: u32, replicas: u8) -> WritePlan {
    let n = (len as u64).div_ceil(u64::from(packet_bytes)).max(1) as u32;
    let mut rng = rand::thread_rng();
    let mut order: Vec<u32> = (0..n).collect();
    order.shuffle(&mut rng);
    let ciphers = (0..n)
        .map(|_| Cipher::ALL.choose(&mut rng).map_or(1, |c| c.id()))
        .collect();
    WritePlan {
        file,
        len: len as u64,
        packet_bytes,
        order,
        ciphers,
        key: KeySecret::random(1),
        replicas,
    }
}

pub fn grant(plan: &WritePlan, records: Vec<PacketRecord>) -> ReadGrant {
    ReadGrant {
        file: plan.file,
        len: plan.len,
        packet_bytes: plan.packet_bytes,
        records,
        keys: vec![plan.key.clone()],
    }
}

/// Every file in `dir` (not below), as (name, bytes).
pub fn blobs_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut blobs: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("a blob reads");
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    blobs.sort();
    blobs
}

/// Recognisable, repetitive plaintext: sensor readings.
pub fn readings(len: usize) -> Vec<u8> {
    let line = b"house=12;plug=3;kind=load;value=0021.50;unit=W\n";
    line.iter().copied().cycle().take(len).collect()
}

/// Copies of each packet in `records`, by packet.
pub fn copies(
    records: &[PacketRecord],
) -> std::collections::BTreeMap<u32, std::collections::BTreeSet<u8>> {
    let mut m: std::collections::BTreeMap<u32, std::collections::BTreeSet<u8>> = Default::default();
    for r in records {
        m.entry(r.packet).or_default().insert(r.source);
    }
    m
}
