//! Sealing a packet and putting its copies.

use crate::error::StoreError;
use crate::packet::{Cipher, KeySecret, PacketRecord, Place, TAG_BYTES};
use crate::placement::{placement_key, rank};
use crate::source::Sources;
use bytes::Bytes;

/// A packet to write: where it is and how to seal it.
#[derive(Clone, Copy)]
pub(super) struct Packet<'a> {
    pub file: u64,
    pub packet: u32,
    pub cipher: Cipher,
    pub key: &'a KeySecret,
}

impl Packet<'_> {
    fn place(&self, sub: u8) -> Place {
        Place {
            file: self.file,
            packet: self.packet,
            sub,
            key: self.key.id,
        }
    }

    fn record(&self, sub: u8, source: u8) -> PacketRecord {
        PacketRecord {
            packet: self.packet,
            sub,
            source,
            cipher: self.cipher.id(),
            key: self.key.id,
        }
    }
}

/// Sub-packets a packet may be split into: the sub id is one byte.
const MAX_SUBS: usize = 256;

/// The most sub-packets a packet of `packet_bytes` may be split into on `sources` (the
/// smallest blob any of them takes decides): what to free of a write never recorded.
pub fn max_subs(sources: &Sources, packet_bytes: u32) -> usize {
    let limit = sources
        .ids()
        .into_iter()
        .filter_map(|s| sources.max_blob_bytes(s))
        .min();
    match limit {
        Some(limit) if packet_bytes as usize + TAG_BYTES > limit as usize => (packet_bytes
            as usize)
            .div_ceil(piece_bytes(limit))
            .min(MAX_SUBS),
        _ => 1,
    }
}

/// Plaintext bytes of a sub-packet for a source taking blobs of at most `limit` bytes.
fn piece_bytes(limit: u32) -> usize {
    // Sources take at least MIN_BLOB_BYTES, well above a tag.
    (limit as usize).saturating_sub(TAG_BYTES).max(1)
}

/// Whether `source` can hold a packet of `len` bytes (in at most MAX_SUBS sub-packets).
fn can_hold(sources: &Sources, source: u8, len: usize) -> bool {
    sources
        .max_blob_bytes(source)
        .is_none_or(|limit| len.div_ceil(piece_bytes(limit)) <= MAX_SUBS)
}

/// Seals `plaintext` as one blob, or as sub-packets of at most `limit` bytes each.
fn seal(
    packet: Packet<'_>,
    plaintext: &[u8],
    limit: Option<u32>,
) -> Result<Vec<Bytes>, StoreError> {
    let piece = match limit {
        Some(limit) if plaintext.len() + TAG_BYTES > limit as usize => piece_bytes(limit),
        _ => {
            let sealed = packet.place(0).seal(packet.cipher, packet.key, plaintext)?;
            return Ok(vec![Bytes::from(sealed)]);
        }
    };
    if plaintext.len().div_ceil(piece) > MAX_SUBS {
        return Err(StoreError::BadPlan(format!(
            "packet {} does not fit in {MAX_SUBS} sub-packets of {piece} bytes",
            packet.packet
        )));
    }
    plaintext
        .chunks(piece)
        .enumerate()
        .map(|(sub, chunk)| {
            let sealed = packet
                .place(sub as u8)
                .seal(packet.cipher, packet.key, chunk)?;
            Ok(Bytes::from(sealed))
        })
        .collect()
}

/// One copy's sealed sub-packets, and what names them.
pub(super) struct Sealed<'a> {
    pub file: u64,
    pub packet: u32,
    pub key: &'a KeySecret,
    pub blobs: Vec<Bytes>,
}

impl Sealed<'_> {
    fn name(&self, sub: usize, source: u8) -> String {
        Place {
            file: self.file,
            packet: self.packet,
            sub: sub as u8,
            key: self.key.id,
        }
        .blob_name(self.key, source)
    }

    fn biggest(&self) -> usize {
        self.blobs.iter().map(Bytes::len).max().unwrap_or(0)
    }
}

/// Puts every sub-packet of a copy on `source`, each under its own name.
async fn put_copy(sources: &Sources, sealed: &Sealed<'_>, source: u8) -> Result<(), StoreError> {
    if let [blob] = sealed.blobs.as_slice() {
        return sources
            .put(source, &sealed.name(0, source), blob.clone())
            .await;
    }
    futures::future::try_join_all(
        sealed
            .blobs
            .iter()
            .enumerate()
            .map(|(sub, blob)| async move {
                sources
                    .put(source, &sealed.name(sub, source), blob.clone())
                    .await
            }),
    )
    .await
    .map(|_| ())
}

/// Whether `source` takes blobs of `bytes`.
pub(super) fn takes(sources: &Sources, source: u8, bytes: usize) -> bool {
    sources
        .max_blob_bytes(source)
        .is_none_or(|max| bytes <= max as usize)
}

/// Puts a copy on the first `wanted` sources of `ranked` that take its blobs, skipping
/// `skip`; a source whose put fails is passed over for the next one. Returns the sources
/// that now hold a copy.
pub(super) async fn place_copies(
    sources: &Sources,
    sealed: &Sealed<'_>,
    ranked: &[u8],
    skip: &[u8],
    wanted: usize,
) -> Result<Vec<u8>, StoreError> {
    let biggest = sealed.biggest();
    let mut candidates = ranked
        .iter()
        .copied()
        .filter(|s| !skip.contains(s) && takes(sources, *s, biggest));
    let mut placed = Vec::with_capacity(wanted);
    let mut last_error = None;
    // The first round goes to all targets at once; failures are replaced one at a time.
    let first: Vec<u8> = candidates.by_ref().take(wanted).collect();
    let puts = first.iter().map(|&s| put_copy(sources, sealed, s));
    for (s, result) in first.iter().zip(futures::future::join_all(puts).await) {
        match result {
            Ok(()) => placed.push(*s),
            Err(e) => last_error = Some(e),
        }
    }
    while placed.len() < wanted {
        let Some(s) = candidates.next() else {
            break;
        };
        tracing::debug!(
            packet = sealed.packet,
            source = s,
            "placing a copy on the next source"
        );
        match put_copy(sources, sealed, s).await {
            Ok(()) => placed.push(s),
            Err(e) => last_error = Some(e),
        }
    }
    if placed.len() < wanted {
        if let Some(e) = last_error {
            tracing::warn!(packet = sealed.packet, error = %e, "a copy found no source");
        }
        return Err(StoreError::NotEnoughSources {
            packet: sealed.packet,
            wanted,
            placed: placed.len(),
        });
    }
    Ok(placed)
}

/// Seals packets and stores each on `replicas` sources; returns their records. The first
/// choices of all packets go out as one batch; a copy that fails there is placed on the
/// next source by itself.
pub(super) async fn write_packets(
    sources: &Sources,
    packets: &[(Packet<'_>, &[u8])],
    replicas: usize,
) -> Result<Vec<PacketRecord>, StoreError> {
    let mut planned = Vec::with_capacity(packets.len());
    let mut puts = Vec::with_capacity(packets.len() * replicas);
    let weights = sources.placement().weights();
    for &(packet, plaintext) in packets {
        // A source whose blobs are too small for this packet is passed over.
        let ranked: Vec<u8> = rank(&weights, placement_key(packet.file, packet.packet))
            .into_iter()
            .filter(|&s| can_hold(sources, s, plaintext.len()))
            .collect();
        // Every copy uses the split the smallest of the first choices needs, so a fallback
        // source gets the same sealed blobs (one plaintext per place, ever).
        let limit = ranked
            .iter()
            .take(replicas)
            .filter_map(|&s| sources.max_blob_bytes(s))
            .min();
        let sealed = Sealed {
            file: packet.file,
            packet: packet.packet,
            key: packet.key,
            blobs: seal(packet, plaintext, limit)?,
        };
        let biggest = sealed.biggest();
        let targets: Vec<u8> = ranked
            .iter()
            .copied()
            .filter(|&s| takes(sources, s, biggest))
            .take(replicas)
            .collect();
        for &s in &targets {
            for (sub, blob) in sealed.blobs.iter().enumerate() {
                puts.push((s, sealed.name(sub, s), blob.clone()));
            }
        }
        planned.push((packet, sealed, ranked, targets));
    }
    let mut results = sources.put_many(puts).await.into_iter();
    let mut records = Vec::with_capacity(packets.len() * replicas);
    for (packet, sealed, ranked, targets) in planned {
        let mut placed = Vec::with_capacity(replicas);
        for &s in &targets {
            let mut ok = true;
            for _ in 0..sealed.blobs.len() {
                ok &= matches!(results.next(), Some(Ok(())));
            }
            if ok {
                placed.push(s);
            }
        }
        if placed.len() < replicas {
            let more =
                place_copies(sources, &sealed, &ranked, &targets, replicas - placed.len()).await?;
            placed.extend(more);
        }
        let subs = sealed.blobs.len();
        records.extend(
            placed
                .iter()
                .flat_map(|&s| (0..subs).map(move |sub| packet.record(sub as u8, s))),
        );
    }
    Ok(records)
}
