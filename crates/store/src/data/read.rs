//! Fetching and opening a packet's copies, falling back from one to the next.

use super::{Copy, Layout};
use crate::error::StoreError;
use crate::packet::Place;
use crate::placement::{placement_key, rank, Outcome};
use crate::source::Sources;
use bytes::Bytes;

fn place(layout: &Layout<'_>, p: u32, copy: &Copy, sub: u8) -> Place {
    Place {
        file: layout.grant.file,
        packet: p,
        sub,
        key: copy.key,
    }
}

/// The copies of packet `p`, most preferred first: in the placement's order now, which is the
/// order they were placed in unless what this process learnt about the sources says
/// otherwise (a slow or failing source goes later).
pub(super) fn preference(weights: &[(u8, f64)], layout: &Layout<'_>, p: u32) -> Vec<Copy> {
    let ranked = rank(weights, placement_key(layout.grant.file, p));
    let mut copies = layout.copies[p as usize].clone();
    copies.sort_by_key(|c| {
        ranked
            .iter()
            .position(|&s| s == c.source)
            .unwrap_or(usize::MAX)
    });
    copies
}

/// The sealed sub-packets of one copy, as the source gave them.
pub(super) async fn fetch_copy(
    sources: &Sources,
    layout: &Layout<'_>,
    p: u32,
    copy: &Copy,
) -> Result<Vec<Bytes>, StoreError> {
    let key = layout.key(copy.key)?;
    let name = |sub: u8| place(layout, p, copy, sub).blob_name(key, copy.source);
    if copy.subs == 1 {
        return Ok(vec![sources.get(copy.source, &name(0)).await?]);
    }
    futures::future::try_join_all((0..copy.subs).map(|sub| {
        let name = name(sub);
        async move { sources.get(copy.source, &name).await }
    }))
    .await
}

/// Opens one copy's sub-packets into the packet's plaintext, which must have the packet's
/// length.
pub(super) fn open_copy(
    layout: &Layout<'_>,
    p: u32,
    copy: &Copy,
    blobs: Vec<Bytes>,
) -> Result<Vec<u8>, StoreError> {
    let key = layout.key(copy.key)?;
    let want = layout.range(p).len();
    let mut plaintext = Vec::new();
    for (sub, blob) in blobs.into_iter().enumerate() {
        let opened = place(layout, p, copy, sub as u8).open(copy.cipher, key, Vec::from(blob))?;
        if plaintext.is_empty() {
            plaintext = opened;
        } else {
            plaintext.extend_from_slice(&opened);
        }
    }
    if plaintext.len() != want {
        // Every sub-packet opened, so the source cannot have done this: the records are wrong.
        return Err(StoreError::PacketCorrupt {
            packet: p,
            sub: copy.subs.saturating_sub(1),
        });
    }
    Ok(plaintext)
}

/// Packet `p`'s plaintext, from the first of `copies` that opens; `worst` is the most telling
/// error of the copies tried before.
async fn read_from(
    sources: &Sources,
    layout: &Layout<'_>,
    p: u32,
    copies: &[Copy],
    mut worst: Option<StoreError>,
) -> Result<Vec<u8>, StoreError> {
    for copy in copies {
        let result = match fetch_copy(sources, layout, p, copy).await {
            Ok(blobs) => open_copy(layout, p, copy, blobs),
            Err(e) => Err(e),
        };
        match result {
            Ok(plaintext) => return Ok(plaintext),
            Err(e) => worst = Some(unreadable(sources, p, copy, e, worst)),
        }
    }
    Err(worst.unwrap_or_else(|| StoreError::BadGrant(format!("packet {p} has no copy"))))
}

/// Notes a copy that could not be read; returns the more telling of its error and `worst`.
fn unreadable(
    sources: &Sources,
    p: u32,
    copy: &Copy,
    e: StoreError,
    worst: Option<StoreError>,
) -> StoreError {
    tracing::warn!(packet = p, source = copy.source, error = %e, "copy unreadable");
    if matches!(e, StoreError::PacketCorrupt { .. }) {
        // The source answered with something else than the blob: for choosing where to read
        // next time, as bad as a missing one.
        sources.placement().record(copy.source, Outcome::Failed);
    }
    match worst {
        Some(w) if w.severity() >= e.severity() => w,
        _ => e,
    }
}

/// The plaintext of each of `packets`. The preferred copies of all of them are fetched and
/// opened as one batch (opened on the threads that fetch them); a packet whose preferred copy
/// fails falls back to its other copies one by one.
pub(super) async fn read_packets(
    sources: &Sources,
    layout: &Layout<'_>,
    packets: &[u32],
) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
    let mut wanted = Vec::with_capacity(packets.len());
    let mut gets = Vec::with_capacity(packets.len());
    let mut opening = Vec::with_capacity(packets.len());
    let weights = sources.placement().weights();
    for &p in packets {
        let copies = preference(&weights, layout, p);
        let Some(first) = copies.first() else {
            return Err(StoreError::BadGrant(format!("packet {p} has no copy")));
        };
        let key = layout.key(first.key)?;
        for sub in 0..first.subs {
            let at = place(layout, p, first, sub);
            gets.push((first.source, at.blob_name(key, first.source)));
            opening.push((at, first.cipher, key.clone()));
        }
        wanted.push((p, copies));
    }
    let opened = sources
        .get_many_then(gets, move |i, blob| {
            let (at, cipher, key) = &opening[i];
            Ok(at.open(*cipher, key, Vec::from(blob))?)
        })
        .await;
    let mut opened = opened.into_iter();
    let mut out = Vec::with_capacity(packets.len());
    for (p, copies) in wanted {
        let first = &copies[0];
        let mut plaintext: Result<Vec<u8>, StoreError> = Ok(Vec::new());
        for _ in 0..first.subs {
            let sub = opened
                .next()
                .unwrap_or_else(|| Err(StoreError::Internal("a get got no answer".into())));
            plaintext = match (plaintext, sub) {
                (Ok(mut all), Ok(part)) if all.is_empty() => {
                    all = part;
                    Ok(all)
                }
                (Ok(mut all), Ok(part)) => {
                    all.extend_from_slice(&part);
                    Ok(all)
                }
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            };
        }
        let plaintext = plaintext.and_then(|pt| {
            if pt.len() == layout.range(p).len() {
                Ok(pt)
            } else {
                // Every sub-packet opened, so the source cannot have done this: the
                // records are wrong.
                Err(StoreError::PacketCorrupt {
                    packet: p,
                    sub: first.subs.saturating_sub(1),
                })
            }
        });
        let plaintext = match plaintext {
            Ok(pt) => pt,
            Err(e) => {
                let worst = unreadable(sources, p, first, e, None);
                read_from(sources, layout, p, &copies[1..], Some(worst)).await?
            }
        };
        out.push((p, plaintext));
    }
    Ok(out)
}
