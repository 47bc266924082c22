//! Keeping files alive: refreshing packets under new keys, repairing lost copies, freeing
//! blobs the metadata no longer names.

use super::read::{fetch_copy, open_copy, preference, read_packets};
use super::write::{place_copies, write_packets, Packet, Sealed};
use super::{batch_packets, check_replicas, in_flight, Copy, Layout, ReadGrant};
use crate::error::StoreError;
use crate::packet::{Cipher, KeySecret, PacketRecord};
use crate::placement::placement_key;
use crate::source::Sources;
use futures::{StreamExt, TryStreamExt};

/// Blobs deleted as one batch.
const FREE_BATCH: usize = 256;
/// Packets repaired at once, each a few single operations on its copies.
const REPAIR_IN_FLIGHT: usize = 32;

/// Rewrites `packets` of a file under the new key secret `key` (a key id the file does not
/// use yet), `ciphers[i]` being the AEAD of `packets[i]`: reads each, seals it again at its
/// place under the new key (so under new names) and stores it on `replicas` sources. Returns
/// the new records of those packets; the old copies stay until freed.
pub async fn rewrite_packets(
    sources: &Sources,
    grant: &ReadGrant,
    packets: &[u32],
    key: &KeySecret,
    ciphers: &[u8],
    replicas: u8,
) -> Result<Vec<PacketRecord>, StoreError> {
    let layout = Layout::new(grant)?;
    let bad = |m: String| Err(StoreError::BadGrant(m));
    if packets.len() != ciphers.len() {
        return bad(format!(
            "{} ciphers for {} packets",
            ciphers.len(),
            packets.len()
        ));
    }
    if grant.keys.iter().any(|k| k.id == key.id) {
        return bad(format!("key id {} is already in use by the file", key.id));
    }
    let mut seen = vec![false; layout.copies.len()];
    for &p in packets {
        match seen.get_mut(p as usize) {
            Some(s) if !*s => *s = true,
            _ => return bad(format!("packet {p} is past the file's end or given twice")),
        }
    }
    let replicas = check_replicas(replicas, sources).map_err(StoreError::BadGrant)?;
    let layout = &layout;
    let work: Vec<(u32, u8)> = packets
        .iter()
        .copied()
        .zip(ciphers.iter().copied())
        .collect();
    // By index and with loops rather than `chunks()` and closures over borrowed items: those
    // are generic over the borrows' lifetimes, and a caller's spawned task then fails rustc's
    // `Send` check.
    let per_batch = batch_packets(grant.packet_bytes);
    let work = &work;
    let mut records: Vec<PacketRecord> = futures::stream::iter((0..work.len()).step_by(per_batch))
        .map(|at| async move {
            let batch = &work[at..work.len().min(at + per_batch)];
            let ids: Vec<u32> = batch.iter().map(|w| w.0).collect();
            let plaintexts = read_packets(sources, layout, &ids).await?;
            let mut packets = Vec::with_capacity(batch.len());
            for (&(p, cipher), (_, plaintext)) in batch.iter().zip(&plaintexts) {
                let packet = Packet {
                    file: grant.file,
                    packet: p,
                    cipher: Cipher::from_id(cipher)?,
                    key,
                };
                packets.push((packet, plaintext.as_slice()));
            }
            write_packets(sources, &packets, replicas).await
        })
        .buffer_unordered(in_flight(sources))
        .try_concat()
        .await?;
    records.sort_unstable();
    tracing::info!(
        file = grant.file,
        packets = packets.len(),
        key = key.id,
        "packets rewritten"
    );
    Ok(records)
}

fn records_of(p: u32, copy: &Copy) -> impl Iterator<Item = PacketRecord> + '_ {
    (0..copy.subs).map(move |sub| PacketRecord {
        packet: p,
        sub,
        source: copy.source,
        cipher: copy.cipher.id(),
        key: copy.key,
    })
}

/// Checks every copy of packet `p` and brings the readable ones up to `replicas`; returns the
/// packet's records.
async fn repair_packet(
    sources: &Sources,
    layout: &Layout<'_>,
    p: u32,
    replicas: usize,
) -> Result<Vec<PacketRecord>, StoreError> {
    let copies = preference(&sources.placement().weights(), layout, p);
    let checks = copies.iter().map(|copy| async move {
        let blobs = fetch_copy(sources, layout, p, copy).await?;
        open_copy(layout, p, copy, blobs.clone())?;
        Ok::<_, StoreError>(blobs)
    });
    let checked = futures::future::join_all(checks).await;
    let mut good: Vec<(Copy, Vec<bytes::Bytes>)> = Vec::new();
    let mut bad: Vec<(Copy, StoreError)> = Vec::new();
    for (copy, result) in copies.into_iter().zip(checked) {
        match result {
            Ok(blobs) => good.push((copy, blobs)),
            Err(e) => bad.push((copy, e)),
        }
    }
    let mut records: Vec<PacketRecord> = good
        .iter()
        .flat_map(|(copy, _)| records_of(p, copy))
        .collect();
    let Some((template, blobs)) = good.first() else {
        let worst = bad
            .into_iter()
            .map(|(_, e)| e)
            .max_by_key(StoreError::severity);
        return Err(
            worst.unwrap_or_else(|| StoreError::BadGrant(format!("packet {p} has no copy")))
        );
    };
    if bad.is_empty() {
        return Ok(records);
    }
    for (copy, e) in &bad {
        tracing::warn!(packet = p, source = copy.source, error = %e, "copy lost; repairing");
    }
    // New copies go to sources with no copy first; a source that answered but lost or spoilt
    // its copy comes last (rewriting the blob there mends it); one that did not answer, never.
    let holds = |s: u8| good.iter().any(|(c, _)| c.source == s);
    let spoilt = |s: u8| bad.iter().any(|(c, _)| c.source == s);
    let unreachable: Vec<u8> = bad
        .iter()
        .filter(|(_, e)| e.is_unreachable())
        .map(|(c, _)| c.source)
        .collect();
    let ranked = sources
        .placement()
        .rank(placement_key(layout.grant.file, p));
    let (fresh, spoilt_sources): (Vec<u8>, Vec<u8>) = ranked.into_iter().partition(|&s| !spoilt(s));
    let order: Vec<u8> = fresh.into_iter().chain(spoilt_sources).collect();
    let skip: Vec<u8> = order
        .iter()
        .copied()
        .filter(|&s| holds(s))
        .chain(unreachable)
        .collect();
    let sealed = Sealed {
        file: layout.grant.file,
        packet: p,
        key: layout.key(template.key)?,
        blobs: blobs.clone(),
    };
    let need = replicas.saturating_sub(good.len());
    let placed = if need > 0 {
        place_copies(sources, &sealed, &order, &skip, need).await?
    } else {
        Vec::new()
    };
    for &s in &placed {
        records.extend(records_of(
            p,
            &Copy {
                source: s,
                ..*template
            },
        ));
    }
    // Spoilt blobs the new copies did not overwrite are deleted, best effort: a source that
    // lost its copy has nothing to delete, one that is down keeps it.
    for (copy, _) in bad.iter().filter(|(c, _)| !placed.contains(&c.source)) {
        let Ok(key) = layout.key(copy.key) else {
            continue;
        };
        for sub in 0..copy.subs {
            let place = crate::packet::Place {
                file: layout.grant.file,
                packet: p,
                sub,
                key: copy.key,
            };
            if let Err(e) = sources
                .delete(copy.source, &place.blob_name(key, copy.source))
                .await
            {
                tracing::debug!(packet = p, source = copy.source, error = %e, "spoilt blob kept");
            }
        }
    }
    Ok(records)
}

/// Reads every copy of every packet; each copy that cannot be read (its source gone or down,
/// its blob missing or corrupt) is replaced from a good copy on another source until each
/// packet has `replicas` good copies again. Returns the file's full new record list (the
/// copies that could not be read are left out of it).
pub async fn repair(
    sources: &Sources,
    grant: &ReadGrant,
    replicas: u8,
) -> Result<Vec<PacketRecord>, StoreError> {
    let layout = Layout::new(grant)?;
    let replicas = check_replicas(replicas, sources).map_err(StoreError::BadGrant)?;
    let layout = &layout;
    let mut records: Vec<PacketRecord> = futures::stream::iter(0..layout.copies.len() as u32)
        .map(|p| repair_packet(sources, layout, p, replicas))
        .buffer_unordered(REPAIR_IN_FLIGHT)
        .try_concat()
        .await?;
    records.sort_unstable();
    let before: std::collections::BTreeSet<_> = grant.records.iter().collect();
    let added = records.iter().filter(|r| !before.contains(r)).count();
    let dropped = (grant.records.len() + added).saturating_sub(records.len());
    tracing::info!(file = grant.file, added, dropped, "file repaired");
    Ok(records)
}

/// Deletes blobs (source, name); a blob already gone counts as deleted. Returns how many
/// were deleted, or the first error if any could not be (deleting again later is safe).
pub async fn free(sources: &Sources, blobs: &[(u8, String)]) -> Result<usize, StoreError> {
    // Owned batches: a stream over borrowed chunks makes a future the compiler cannot
    // prove `Send` for every lifetime, and the masters' upkeep task needs it to be.
    let batches: Vec<Vec<(u8, String)>> = blobs.chunks(FREE_BATCH).map(<[_]>::to_vec).collect();
    let results: Vec<Result<(), StoreError>> = futures::stream::iter(batches)
        .map(|batch| sources.delete_many(batch))
        .buffer_unordered(in_flight(sources))
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    let deleted = results.iter().filter(|r| r.is_ok()).count();
    match results.into_iter().find_map(Result::err) {
        Some(e) => {
            tracing::warn!(deleted, of = blobs.len(), error = %e, "blobs not all freed");
            Err(e)
        }
        None => Ok(deleted),
    }
}
